"""``taylorseer``: the forecast on polynomials worked out by hand, diffusers' TaylorSeerCache bitwise in
compat mode (lite mode and attention sites, split and batched CFG), and the policy beside cfg_cache."""

import pytest
import torch
from diffusers import TaylorSeerCacheConfig

import cachekit
from cachekit.errors import ConfigError
from cachekit.reconstruct import taylor
from tests import toy
from tests.pipelines import (cogvideox_call, model_call, tiny_cogvideox_pipeline, tiny_hunyuan_video_pipeline,
                             tiny_wan_pipeline, wan_call)

torch.set_num_threads(1)


def hunyuan_call(pipe, steps):
    return model_call("hunyuan_video", pipe, steps)


FAMILIES = {"wan": (tiny_wan_pipeline, wan_call), "cogvideox": (tiny_cogvideox_pipeline, cogvideox_call),
            "hunyuan_video": (tiny_hunyuan_video_pipeline, hunyuan_call)}


def quadratic(alpha, beta, gamma):
    return lambda s: alpha + beta * s + gamma * s * s


def test_taylor_kernel_on_polynomials_by_hand():
    """TaylorSeer's factors are backward differences: exact on a line; on f = alpha + beta s + gamma s^2
    from steps s0 < s1 < s2 the forecast at s is f(s2) + (beta + gamma (s1 + s2)) k
    + gamma (s2 - s0) / (s2 - s1) k^2 / 2, k = s - s2."""
    alpha, beta, gamma = (torch.tensor([v], dtype=torch.float64) for v in (0.3, -1.25, 0.5))
    line = quadratic(alpha, beta, 0.0)
    assert torch.allclose(taylor([line(2), line(5)], steps=(2, 5), at=9), line(9), rtol=0, atol=1e-12)
    assert torch.allclose(taylor([line(0), line(2), line(5)], steps=(0, 2, 5), at=9), line(9), rtol=0, atol=1e-12)
    f = quadratic(alpha, beta, gamma)
    s0, s1, s2, s = 1, 2, 4, 7
    k = s - s2
    by_hand = f(s2) + (beta + gamma * (s1 + s2)) * k + gamma * (s2 - s0) / (s2 - s1) * k * k / 2
    assert torch.allclose(taylor([f(s0), f(s1), f(s2)], steps=(s0, s1, s2), at=s), by_hand, rtol=0, atol=1e-12)
    assert not torch.allclose(by_hand, f(s))  # the forecast is TaylorSeer's, not the interpolating polynomial
    first = f(s2) + (beta + gamma * (s1 + s2)) * k  # order 1 from the two latest
    assert torch.allclose(taylor([f(s1), f(s2)], steps=(s1, s2), at=s), first, rtol=0, atol=1e-12)
    # stored in bfloat16: every factor rounded after its update, the sum taken in the output's dtype
    x = torch.tensor([1.001, 2.003], dtype=torch.float32)
    y = x + 0.01
    d0, d1 = y.to(torch.bfloat16), ((y - x.to(torch.bfloat16).float()) / 1).to(torch.bfloat16)
    assert torch.equal(taylor([x, y], steps=(3, 4), at=6, dtype="bfloat16"), d0.float() + d1.float() * 2.0)


def test_policy_on_the_curved_toy_matches_the_forecast_by_hand():
    """warmup 3, interval 4, order 2 over 20 steps: compute at 0, 1, 2 and where (s - 4) % 4 == 0;
    forecast the toy's attention (quadratic in the step) from the three latest computed steps."""
    toy.register()
    try:
        model = toy.ToyCurvedDenoiser()
        config = {"policy": [{"type": "taylorseer", "sites": {"kinds": ["attn"]}, "warmup": 3, "interval": 4, "order": 2}]}
        session = cachekit.enable(model, config, num_inference_steps=20, cfg=True)
        try:
            out, _ = toy.sample(model, 20, toy.latents())
        finally:
            cachekit.disable(model)
    finally:
        cachekit.reload_plugins(keep_code=False)
    full = [s for s in range(20) if s < 3 or (s - 4) % 4 == 0]
    assert full == [0, 1, 2, 4, 8, 12, 16]
    assert session.report().counts()["reconstruct"] == 2 * (20 - len(full))
    a, b, c = (p.detach() for p in (model.attn.a, model.attn.b, model.attn.c))
    # attention(s) = a + b t + c t^2 with t = 1 - 0.04 s: alpha + beta s + gamma s^2 in the step
    f = quadratic(a + b + c, -0.04 * b - 0.08 * c, 0.0016 * c)
    beta, gamma = -0.04 * b - 0.08 * c, 0.0016 * c
    x, computed = toy.latents(), []
    for s in range(20):
        if s in full:
            attention = f(s)
            computed.append(s)
        else:
            s0, s1, s2 = computed[-3:]
            k = s - s2
            attention = f(s2) + (beta + gamma * (s1 + s2)) * k + gamma * (s2 - s0) / (s2 - s1) * k * k / 2
        t = 1.0 - 0.04 * s
        cond = torch.tanh(x + attention)
        uncond = cond + model.field.detach() + t * model.drift.detach()
        x = x - 0.1 * (uncond + 3.0 * (cond - uncond))
    assert (out - x).abs().max() < 1e-9
    reference, _ = toy.sample(model, 20, toy.latents())
    assert (out - reference).abs().max() > 1e-4  # the forecast is not the computed attention: the test can fail


COMPAT = [
    ("wan", dict(use_lite_mode=True), dict(lite=True)),
    ("wan", dict(use_lite_mode=True, max_order=2, cache_interval=3, disable_cache_before_step=2, disable_cache_after_step=9),
     dict(lite=True, order=2, interval=3, warmup=2, end=9)),
    ("wan", dict(cache_identifiers=[r"blocks\.\d+\.attn1"], max_order=2, cache_interval=3), dict(order=2, interval=3)),
    ("wan", dict(cache_identifiers=[r"blocks\.\d+\.attn1"], taylor_factors_dtype=torch.float32),
     dict(factors_dtype="float32")),
    ("cogvideox", dict(use_lite_mode=True, max_order=2), dict(lite=True, order=2)),
    ("cogvideox", dict(cache_identifiers=[r"transformer_blocks\.\d+\.attn1"], cache_interval=3), dict(interval=3)),
    ("hunyuan_video", dict(max_order=2, cache_interval=3), dict(order=2, interval=3)),  # default patterns hook `.attn`
]


@pytest.mark.parametrize("family, theirs, ours", COMPAT, ids=[f"{c[0]}-{i}" for i, c in enumerate(COMPAT)])
def test_compat_equals_diffusers_taylorseer_bitwise(family, theirs, ours):
    """Wan calls once per branch in contexts "cond" and "uncond", and diffusers keeps one state per
    context, so each branch's counter advances once a step: per-branch plans reproduce it."""
    build, call = FAMILIES[family]
    pipe = build()
    pipe.transformer.enable_cache(TaylorSeerCacheConfig(**theirs))
    expected = pipe(**call(pipe, 12)).frames
    pipe.transformer.disable_cache()
    with cachekit.enabled(pipe, {"policy": [{"type": "taylorseer", "compat": "diffusers", **ours}]}) as session:
        got = pipe(**call(pipe, 12)).frames
        counts = session.report().counts()
    assert torch.equal(got, expected)
    assert counts["reconstruct"] > 0
    assert not torch.equal(got, pipe(**call(pipe, 12)).frames)  # the forecast changed the result: the test can fail


def test_diffusers_default_patterns_hook_nothing_on_wan_and_cogvideox():
    """diffusers' default patterns fullmatch module names ending in "attn" (Flux, HunyuanVideo); Wan's
    and CogVideoX's attentions are attn1/attn2, so its default TaylorSeer leaves them uncached."""
    for build in (tiny_wan_pipeline, tiny_cogvideox_pipeline):
        model = build().transformer
        model.enable_cache(TaylorSeerCacheConfig())
        assert not [n for n, m in model.named_modules()
                    if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook("taylorseer_cache")]
        model.disable_cache()


def stack_log(session, site_name):
    return session.runtime.last_run.history(site_name)


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
def test_split_and_batched_cfg_alone_and_beside_cfg_cache(family):
    """Wan (split CFG) and CogVideoX (batched): forecasts on every branch, logged; beside cfg_cache the
    uncond branch is rebuilt at the denoiser and its attention is not called there."""
    build, call = FAMILIES[family]
    pipe = build()
    with cachekit.enabled(pipe, {"policy": [{"type": "taylorseer", "interval": 3, "warmup": 2}]}) as session:
        pipe(**call(pipe, 10))
        log = stack_log(session, "blocks.0.attn.joint")
    forecast = {(step, branches) for step, branches, kind in log if kind == "reconstruct"}
    assert {step for step, _ in forecast} == {2, 4, 5, 7, 8}
    assert {b for _, branches in forecast for b in branches} == {"uncond", "cond"}
    config = {"policy": [{"type": "taylorseer", "interval": 3, "warmup": 2},
                         {"type": "cfg_cache", "interval": 3, "window": {"start": 0.2, "end": 1.0}}]}
    with cachekit.enabled(pipe, config) as session:
        pipe(**call(pipe, 10))
        counts = session.report().counts()
        attention = stack_log(session, "blocks.0.attn.joint")
        denoiser = stack_log(session, "denoiser")
    rebuilt_uncond = {step for step, branches, kind in denoiser if kind == "reconstruct" and branches == ("uncond",)}
    assert rebuilt_uncond and counts["reconstruct"] > len(rebuilt_uncond)
    assert not any("uncond" in branches and step in rebuilt_uncond for step, branches, _ in attention)


def test_lite_forecasts_the_denoiser_only():
    pipe = tiny_wan_pipeline()
    with cachekit.enabled(pipe, {"policy": [{"type": "taylorseer", "lite": True}]}) as session:
        pipe(**wan_call(pipe, 10))
        sites = {s.name for s in session.planned_sites}
        log = stack_log(session, "denoiser")
    assert sites == {"denoiser"}
    assert [step for step, branches, kind in log if kind == "reconstruct" and branches == ("cond",)] == [3, 5, 6, 7, 8]


def test_bad_settings_are_refused():
    for bad, field in [({"interval": 0}, "interval"), ({"order": 5}, "order"), ({"warmup": -1}, "warmup"),
                       ({"end": 0}, "end"), ({"factors_dtype": "int8"}, "factors_dtype"), ({"lite": 1}, "lite"),
                       ({"lite": True, "sites": {"kinds": ["stack"]}}, "sites"), ({"compat": "cache-dit"}, "compat")]:
        with pytest.raises(ConfigError, match=field):
            cachekit.load_config({"policy": [{"type": "taylorseer", **bad}]})


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
def test_stack_residual_forecast_and_factor_dtype(family):
    """On the block stack the residual is forecast (embeddings and head computed): interval 2 after 2
    warm-up steps forecasts steps 2, 4, 6, 8 on both branches. Factors stored in bfloat16 (compat's
    default) give another result than factors kept in the output's float32."""
    build, call = FAMILIES[family]
    pipe = build()
    config = {"policy": [{"type": "taylorseer", "sites": {"kinds": ["stack"]}, "interval": 2, "warmup": 2}]}
    with cachekit.enabled(pipe, config) as session:
        exact = pipe(**call(pipe, 10)).frames
        log = stack_log(session, "stack")
    assert sorted(step for step, _, kind in log if kind == "reconstruct") == [2, 2, 4, 4, 6, 6, 8, 8]
    rounded = {"policy": [{**config["policy"][0], "factors_dtype": "bfloat16"}]}
    with cachekit.enabled(pipe, rounded):
        assert not torch.equal(pipe(**call(pipe, 10)).frames, exact)
