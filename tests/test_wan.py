"""The Wan adapter on a real tiny WanPipeline, whose split CFG calls the transformer once per branch
(cond, then uncond): diffusers' own FasterCache breaks on it, cachekit's plans execute exactly."""

import warnings

import pytest
import torch

import cachekit
from tests.pipelines import WAN_LATENT, tiny_wan_pipeline, wan_call

torch.set_num_threads(1)

STEPS = 10  # flow-matching Euler, shift 7: timesteps 1000, 983, 961, 934, 899, 850, 781, 674, 482, 47


@pytest.fixture
def pipe():
    return tiny_wan_pipeline()


@pytest.fixture(scope="module")
def reference():
    """Uncached final latents of the seed-0 call."""
    pipe = tiny_wan_pipeline()
    return run(pipe)


def run(pipe, steps: int = STEPS, **kwargs) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pipe(**wan_call(pipe, steps, **kwargs)).frames


def executed_matches_plan(session):
    report = session.report()
    assert report.executed == {node: a.kind for node, a in session.plan.nodes() if a.kind != "skip"}
    return report


def test_adapter_sites(pipe):
    session = cachekit.enable(pipe, "fastercache")
    assert type(session.adapter).__name__ == "WanAdapter"
    assert session.adapter.cfg_layout == "split" and session.adapter.call_order == ("cond", "uncond")
    sites = session.adapter.sites()
    assert [(s.name, s.kind, s.module_path, s.parent, s.residual) for s in sites[:5]] == [
        ("denoiser", "denoiser", "", None, False),
        ("blocks.0", "block", "blocks.0", "denoiser", True),
        ("blocks.0.attn.joint", "attn.joint", "blocks.0.attn1", "blocks.0", False),
        ("blocks.0.attn.cross", "attn.cross", "blocks.0.attn2", "blocks.0", False),
        ("blocks.0.mlp", "mlp", "blocks.0.ffn", "blocks.0", False),
    ]
    assert len(sites) == 9 and sites[0].layout == "BCFHW"
    # attn1 is self-attention (no text), attn2 attends to the text
    assert session.adapter.module(sites[2]).cross_attention_dim_head is None
    assert session.adapter.module(sites[3]).cross_attention_dim_head is not None
    run(pipe, steps=4, guidance_scale=1.0)  # one call per step, cond only
    assert session.report().branches == ("cond",)
    cachekit.disable(pipe)


def test_diffusers_fastercache_fails_on_split_cfg(pipe):
    """diffusers' FasterCache assumes batched [uncond, cond] inputs: its attention hook takes the
    cond half of a cached output with ``chunk(2)[1]``, which a one-sample split call does not have."""
    from diffusers import FasterCacheConfig

    pipe.transformer.enable_cache(FasterCacheConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 681),
        unconditional_batch_skip_range=5, unconditional_batch_timestep_skip_range=(-1, 781),
        attention_weight_callback=lambda _: 0.3, current_timestep_callback=lambda: pipe.current_timestep,
        tensor_format="BCFHW",
    ))
    with pytest.raises(IndexError, match="tuple index out of range"):
        run(pipe)
    pipe.transformer.disable_cache()


def test_fastercache_preset_on_split_cfg(pipe, reference):
    session = cachekit.enable(pipe, "fastercache")
    first = run(pipe)  # profiles
    # count the transformer's real forwards: patch_embedding runs inside the original forward
    # only (a pre-hook on pipe.transformer itself also fires for the calls cachekit answers)
    calls = []
    handle = pipe.transformer.patch_embedding.register_forward_pre_hook(lambda module, args: calls.append(1))
    out = run(pipe)
    handle.remove()
    report = executed_matches_plan(session)
    assert torch.equal(out, first)
    assert report.branches == ("uncond", "cond")
    rebuilt = {(step, site, branch) for (step, site, branch), kind in report.executed.items() if kind == "reconstruct"}
    assert any(site == "denoiser" and branch == "uncond" for _, site, branch in rebuilt)
    assert not any(site == "denoiser" and branch == "cond" for _, site, branch in rebuilt)
    skipped = sum(1 for (_, site, _), kind in report.executed.items() if site == "denoiser" and kind == "reconstruct")
    assert len(calls) == 2 * STEPS - skipped < 2 * STEPS
    # a branch whose denoiser output is rebuilt runs none of its blocks that step
    for (step, site, branch) in rebuilt:
        if site == "denoiser":
            assert (step, "blocks.0.attn.joint", branch) not in report.executed
    assert (out - reference).abs().max().item() > 1e-3
    cachekit.disable(pipe)
    assert torch.equal(run(pipe), reference)


def test_cfg_cache_alone(pipe, reference):
    session = cachekit.enable(pipe, {"policy": [{"type": "cfg_cache", "window": {"start": 0.0, "end": 1.0},
                                                 "interval": 2, "a_low": 0.0, "a_high": 0.0}]})
    out = run(pipe)
    report = executed_matches_plan(session)
    planned = sum(1 for _, a in session.plan.nodes() if a.kind == "reconstruct")
    assert report.counts()["reconstruct"] == planned == STEPS // 2  # uncond at every odd step
    error = ((out - reference).norm() / reference.norm()).item()
    assert 1e-4 < error < 0.016, error  # measured 0.0077
    cachekit.disable(pipe)


def test_block_residual_reuse(pipe, reference):
    """Reusing a whole block adds its cached residual (output - input) of the branch's last computed
    step to the new input; compare with a forward hook doing the same on the cond, uncond calls."""
    reuse = {5, 7, 9}
    state = {"call": 0, "residual": {}}

    def hook(module, args, output):
        step, branch = divmod(state["call"], 2)
        state["call"] += 1
        if step in reuse:
            return args[0] + state["residual"][branch]
        state["residual"][branch] = output - args[0]
        return output

    handle = pipe.transformer.blocks[1].register_forward_hook(hook)
    expected = run(pipe)
    handle.remove()
    session = cachekit.enable(pipe, {"policy": [{"type": "reuse", "sites": {"names": ["blocks.1"]}, "interval": 2,
                                                 "window": {"start": 4, "end": STEPS, "unit": "step"}}]})
    out = run(pipe)
    report = executed_matches_plan(session)
    assert report.counts()["reuse"] == 2 * len(reuse)
    assert not any(site.startswith("blocks.1.") for (step, site, _) in report.executed if step in reuse)
    assert (out - expected).abs().max().item() <= 1e-5
    assert (out - reference).abs().max().item() > 1e-3
    cachekit.disable(pipe)


def test_dry_run_prediction(pipe):
    session = cachekit.enable(pipe, "fastercache")
    session.adapter.example_latent = WAN_LATENT  # the default is Wan's 480p, 81-frame latent
    args, kwargs = session.adapter.example_call(1)
    assert args[0].shape == (1, 4, *WAN_LATENT)
    prediction = session.predict(session.plan_for(STEPS))
    assert prediction.speedup > 0 and prediction.peak_cache_bytes > 0  # timed: its value is not asserted
    assert sum(prediction.step_fractions) < STEPS  # steps that skip the uncond call cost less
    cachekit.disable(pipe)
