"""FasterCache policies on a real tiny LattePipeline: diffusers as oracle, decisions, guidance off, batches."""

import pytest
import torch
from diffusers import FasterCacheConfig, PyramidAttentionBroadcastConfig

import cachekit
from cachekit.demo import demo_call
from tests.conftest import run
from tests.recording import Recorder, check_cached_values

STEPS = 20


def timestep_window(lo, hi):
    return {"start": lo, "end": hi, "unit": "timestep"}


def diffusers_run(pipe, config, **kwargs):
    pipe.transformer.enable_cache(config)
    try:
        return run(pipe, steps=STEPS, **kwargs)
    finally:
        pipe.transformer.disable_cache()


def cachekit_run(pipe, config, **kwargs):
    session = cachekit.enable(pipe, config)
    try:
        return run(pipe, steps=STEPS, **kwargs), session
    finally:
        cachekit.disable(pipe)


FASTERCACHE_SETTINGS = {
    "defaults": (
        dict(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 681),
             unconditional_batch_skip_range=5, unconditional_batch_timestep_skip_range=(-1, 641),
             attention_weight_callback=lambda _: 0.5),
        [{"type": "fastercache", "compat": "diffusers", "sites": {"kinds": ["attn.spatial"]},
          "window": timestep_window(-1, 681), "interval": 2, "schedule": "constant", "weight": 0.5,
          "cfg_interval": 5, "cfg_window": timestep_window(-1, 641)},
         {"type": "cfg_cache", "compat": "diffusers", "window": timestep_window(-1, 641), "interval": 5,
          "weighting": "compounding", "alpha_low": 1.1, "alpha_high": 1.1}],
    ),
    "spatial+temporal": (
        dict(spatial_attention_block_skip_range=3, spatial_attention_timestep_skip_range=(-1, 800),
             temporal_attention_block_skip_range=2, temporal_attention_timestep_skip_range=(-1, 700),
             unconditional_batch_skip_range=4, unconditional_batch_timestep_skip_range=(-1, 750),
             attention_weight_callback=lambda _: 0.3, alpha_low_frequency=1.2, alpha_high_frequency=1.05,
             low_frequency_weight_update_timestep_range=(300, 901), high_frequency_weight_update_timestep_range=(-1, 400)),
        [{"type": "fastercache", "label": "spatial", "compat": "diffusers", "sites": {"kinds": ["attn.spatial"]},
          "window": timestep_window(-1, 800), "interval": 3, "schedule": "constant", "weight": 0.3,
          "cfg_interval": 4, "cfg_window": timestep_window(-1, 750)},
         {"type": "fastercache", "label": "temporal", "compat": "diffusers", "sites": {"kinds": ["attn.temporal"]},
          "window": timestep_window(-1, 700), "interval": 2, "schedule": "constant", "weight": 0.3,
          "cfg_interval": 4, "cfg_window": timestep_window(-1, 750)},
         {"type": "cfg_cache", "compat": "diffusers", "window": timestep_window(-1, 750), "interval": 4,
          "weighting": "compounding", "alpha_low": 1.2, "alpha_high": 1.05,
          "low_window": timestep_window(300, 901), "high_window": timestep_window(-1, 400)}],
    ),
}


@pytest.mark.parametrize("setting", FASTERCACHE_SETTINGS)
def test_fastercache_matches_diffusers(latte, latte_reference, setting):
    theirs, ours = FASTERCACHE_SETTINGS[setting]
    expected = diffusers_run(latte, FasterCacheConfig(**theirs, tensor_format="BCFHW",
                                                      current_timestep_callback=lambda: latte.current_timestep))
    out, session = cachekit_run(latte, {"policy": ours})
    counts = session.report().counts()
    assert counts["reconstruct"] > 0 and not torch.equal(out, latte_reference(STEPS))
    assert torch.equal(out, expected), (out - expected).abs().max().item()  # compat: bit for bit


PAB_SETTINGS = {
    "spatial": (
        dict(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(100, 800)),
        # diffusers' spatial identifiers also match Latte's temporal attention
        {"sites": {"kinds": ["attn.spatial", "attn.temporal"]}, "window": timestep_window(100, 800),
         "spatial": 2, "temporal": 2, "cross": 1},
    ),
    "spatial+cross": (
        dict(spatial_attention_block_skip_range=3, spatial_attention_timestep_skip_range=(100, 800),
             cross_attention_block_skip_range=4, cross_attention_timestep_skip_range=(200, 900)),
        {"sites": {"kinds": ["attn"]}, "window": timestep_window(100, 800), "spatial": 3, "temporal": 3,
         "cross": 4, "cross_window": timestep_window(200, 900)},
    ),
}


@pytest.mark.parametrize("setting", PAB_SETTINGS)
def test_pab_matches_diffusers(latte, latte_reference, setting):
    theirs, ours = PAB_SETTINGS[setting]
    expected = diffusers_run(latte, PyramidAttentionBroadcastConfig(**theirs, current_timestep_callback=lambda: latte.current_timestep))
    out, session = cachekit_run(latte, {"policy": [{"type": "pab", "compat": "diffusers", **ours}]})
    assert session.report().counts()["reuse"] > 0 and not torch.equal(out, latte_reference(STEPS))
    assert torch.equal(out, expected), (out - expected).abs().max().item()  # compat: bit for bit


def _diffusers_cache_bytes(model):
    seen, total = set(), 0
    for module in model.modules():
        registry = module.__dict__.get("_diffusers_hook")
        for hook in (registry.hooks.values() if registry else ()):
            state = getattr(hook, "state", None)
            values = [getattr(state, n, None) for n in ("cache", "low_frequency_delta", "high_frequency_delta")]
            stack = list(values)
            while stack:
                value = stack.pop()
                if isinstance(value, (list, tuple)):
                    stack.extend(value)
                elif isinstance(value, torch.Tensor) and value.data_ptr() not in seen:
                    seen.add(value.data_ptr())
                    total += value.nbytes
    return total


def test_compat_holds_less_cache_than_diffusers(latte):
    theirs, ours = FASTERCACHE_SETTINGS["defaults"]
    peak = [0]

    def track(pipe, step, t, kwargs):
        peak[0] = max(peak[0], _diffusers_cache_bytes(pipe.transformer))
        return {}

    diffusers_run(latte, FasterCacheConfig(**theirs, tensor_format="BCFHW", current_timestep_callback=lambda: latte.current_timestep),
                  callback_on_step_end=track)
    _, session = cachekit_run(latte, {"policy": ours})
    report = session.report()
    assert 0 < report.measured_peak_cache_bytes == report.predicted_peak_cache_bytes < peak[0]


@pytest.mark.parametrize("preset", ["fastercache", "fastercache/latte"])
def test_presets_execute_their_plan(latte, preset):
    """Executed = plan, predicted bytes measured, and every rebuilt output (the uncond branch of the
    denoiser, the self-attention) equals the plan's kernel on the outputs its sources computed."""
    session = cachekit.enable(latte, preset, profile=True)
    run(latte, steps=STEPS)  # profiles the model
    sites = [s.name for s in session.adapter.sites() if s.kind in ("denoiser", "attn.spatial", "attn.temporal")]
    with Recorder(session, sites) as recorder:
        run(latte, steps=STEPS)
    cachekit.disable(latte)
    report = session.report()
    assert report.executed == {n: a.kind for n, a in session.plan.nodes() if a.kind != "skip"}
    assert report.counts()["reconstruct"] > 0 and report.hit_rates["denoiser"] > 0
    assert report.measured_peak_cache_bytes == report.predicted_peak_cache_bytes
    assert report.prediction_basis == "seconds"
    assert check_cached_values(session, recorder) == sum(k != "compute" for k in report.executed.values())


def test_cfg_policy_without_guidance_says_so_and_computes(latte):
    kwargs = demo_call(latte, steps=10, guidance_scale=1.0)
    expected = latte(**kwargs).frames
    session = cachekit.enable(latte, {"policy": [{"type": "cfg_cache"}]})
    with pytest.warns(UserWarning, match=r"policy 'cfg_cache' made no decision other than compute in this run: the run has no uncond branch \(guidance is off\)"):
        out = latte(**demo_call(latte, steps=10, guidance_scale=1.0)).frames
    cachekit.disable(latte)
    assert torch.equal(out, expected)
    assert session.report().branches == ("cond",)


def _prompts(pipe, indices, steps):
    kwargs = demo_call(pipe, steps=steps)
    embeds, latents = [], []
    for i in indices:
        generator = torch.Generator().manual_seed(100 + i)
        embeds.append(torch.randn(1, 6, 32, generator=generator))
        latents.append(torch.randn(1, 4, 4, 8, 8, generator=generator))
    kwargs.update(prompt_embeds=torch.cat(embeds), negative_prompt_embeds=torch.zeros(len(indices), 6, 32),
                  latents=torch.cat(latents))
    return kwargs


def test_batch_of_prompts_matches_single_runs(latte):
    """Latte itself differs by ~1e-7 per step between batch sizes (matmul blocking), which 3 guided
    steps amplify to ~1e-5; the cached batch must not differ from its single runs by more than that."""
    def gap():
        both = latte(**_prompts(latte, [0, 1], 6)).frames
        singles = torch.cat([latte(**_prompts(latte, [i], 6)).frames for i in (0, 1)])
        return (both - singles).abs().max().item()

    uncached = gap()
    session = cachekit.enable(latte, {"policy": [
        {"type": "fastercache", "window": {"start": 0.0, "end": 1.0}},
        {"type": "cfg_cache", "window": {"start": 0.0, "end": 1.0}, "interval": 2}]})
    cached = gap()
    cachekit.disable(latte)
    assert session.report().counts()["reconstruct"] > 0
    assert cached <= max(1e-5, 1.5 * uncached)


def test_compat_fastercache_must_follow_the_cfg_cache_entry():
    _, ours = FASTERCACHE_SETTINGS["defaults"]
    cachekit.load_config({"policy": ours})
    mismatched = [dict(ours[0], cfg_interval=3), ours[1]]
    with pytest.raises(cachekit.ConfigError, match="policy 'fastercache': field 'cfg_interval/cfg_window': got \\(3, .* expected the interval and window of cfg_cache entry 'cfg_cache'"):
        cachekit.load_config({"policy": mismatched})
