"""``teacache``: the accumulate/reset rule on a hand-computed sequence, the coefficient fit, and runs on
split (Wan) and batched (CogVideoX) CFG with either signal, alone and beside cfg_cache."""

import numpy as np
import pytest
import torch

import cachekit
from cachekit.errors import ConfigError, PlanError
from cachekit.policies.teacache import TeaCache, fit_teacache_coefficients
from cachekit.policy import OnlineContext, RunInfo
from cachekit.sites import Site
from tests.pipelines import cogvideox_call, tiny_cogvideox_pipeline, tiny_wan_pipeline, wan_call

torch.set_num_threads(1)

STACK = Site("stack", "stack", "blocks.0", span=("blocks.0", "blocks.1"))


def drive(policy, signals, as_temb=False):
    """Run ``policy`` over the steps as the runtime does (planned computes observed; online steps
    decide, and observe when they compute); 'C'/'S' per step."""
    plan = policy.plan_site(STACK, "cond", range(len(signals)), RunInfo(num_steps=len(signals)))
    state, pattern = {}, []
    for step, value in enumerate(signals):
        hidden = torch.full((2, 3), 7.0)
        inputs, kwargs = ((), {"hidden_states": hidden, "temb": value}) if as_temb else ((value,), {})
        context = OnlineContext(step, None, "cond", STACK, inputs, kwargs, state, {}, len(signals), ("cond",))
        if plan[step].kind == "online" and policy.decide(context):
            pattern.append("S")
            continue
        policy.observe(context, (hidden,))
        pattern.append("C")
    return "".join(pattern)


SIGNALS = [torch.full((4,), v) for v in (1.0, 1.1, 1.2, 1.5, 1.6, 1.65, 2.0, 2.1)]


def test_accumulate_and_reset_on_a_hand_computed_sequence():
    """Relative changes from step 1: 0.1, 0.0909, 0.25, 0.0667, 0.03125, 0.2121, 0.05; first and last
    steps computed. Identity coefficients, threshold 0.3: 0.1, 0.191 (skip), 0.441 (compute), 0.0667,
    0.0979 (skip), 0.310 (compute). poly = 2x: 0.2 (skip), 0.382 (compute), 0.5 (compute), 0.133, 0.196
    (skip), 0.620 (compute)."""
    assert drive(TeaCache(rel_l1_thresh=0.3), SIGNALS) == "CSSCSSCC"
    assert drive(TeaCache(rel_l1_thresh=0.3, coefficients=[2.0, 0.0]), SIGNALS) == "CSCCSSCC"
    assert drive(TeaCache(rel_l1_thresh=0.3, modulated_input="temb"), SIGNALS, as_temb=True) == "CSSCSSCC"
    # warm-up 3, last 2: 0.25 (skip), 0.317 (compute), 0.031 (skip)
    assert drive(TeaCache(rel_l1_thresh=0.3, warmup=3, final=2), SIGNALS) == "CCCSCSCC"
    assert drive(TeaCache(rel_l1_thresh=0.0), SIGNALS) == "C" * 8


def test_rescale_is_numpy_poly1d():
    coefficients = [-5.2e4, 9.2e3, -5.3e2, 13.7, -0.05]
    policy = TeaCache(coefficients=coefficients)
    for x in (0.0, 0.013, 0.1, 0.37):
        assert policy.rescale(x) == pytest.approx(np.poly1d(coefficients)(x), rel=1e-12, abs=1e-12)


def test_fit_recovers_a_polynomial_and_matches_numpy_polyfit():
    truth = [3.0, -2.0, 0.5, 0.1, 0.01]
    x = np.linspace(0.01, 0.5, 20)
    assert np.allclose(fit_teacache_coefficients(x.tolist(), np.poly1d(truth)(x).tolist()), truth, rtol=1e-6, atol=1e-9)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0.0, 0.3, 40), rng.uniform(0.0, 0.5, 40)
    for degree in (1, 2, 4):
        got = fit_teacache_coefficients(torch.tensor(x), torch.tensor(y), degree=degree)
        assert len(got) == degree + 1
        assert np.allclose(got, np.polyfit(x, y, degree), rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="length"):
        fit_teacache_coefficients([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="more than 4 points"):
        fit_teacache_coefficients([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])


def stack_log(session):
    return session.runtime.last_run.history("stack")


def test_split_cfg_wan_with_either_signal():
    """On Wan the "temb" signal is the block's timestep projection (the official Wan patch's e0): the
    same for every prompt, so the skip pattern does not depend on the seed."""
    pipe = tiny_wan_pipeline()
    patterns = []
    for seed in (0, 1):
        with cachekit.enabled(pipe, {"policy": [{"type": "teacache", "rel_l1_thresh": 0.3, "modulated_input": "temb"}]}) as s:
            pipe(**wan_call(pipe, 10, seed=seed))
            patterns.append(stack_log(s))
    assert patterns[0] == patterns[1]
    assert {b for _, branches, kind in patterns[0] if kind == "reuse" for b in branches} == {"cond", "uncond"}
    with cachekit.enabled(pipe, {"policy": [{"type": "teacache", "rel_l1_thresh": 0.3}]}) as s:
        pipe(**wan_call(pipe, 10))
        log = stack_log(s)
    assert any(kind == "reuse" for _, _, kind in log)
    assert all(kind == "compute" for step, _, kind in log if step in (0, 9))


def test_batched_cfg_cogvideox_and_beside_cfg_cache():
    pipe = tiny_cogvideox_pipeline()
    for signal, threshold in (("hidden_states", 0.3), ("temb", 3.0)):
        with cachekit.enabled(pipe, {"policy": [{"type": "teacache", "rel_l1_thresh": threshold,
                                                 "modulated_input": signal}]}) as s:
            pipe(**cogvideox_call(pipe, 10))
            log = stack_log(s)
        assert {b for _, branches, kind in log if kind == "reuse" for b in branches} == {"uncond", "cond"}
    config = {"policy": [{"type": "teacache", "rel_l1_thresh": 0.3, "scope": "branch"},
                         {"type": "cfg_cache", "interval": 3, "window": {"start": 0.2, "end": 1.0}}]}
    with cachekit.enabled(pipe, config) as s:
        pipe(**cogvideox_call(pipe, 10))
        log = stack_log(s)
        counts = s.report().counts()
    assert counts["reconstruct"] > 0 and any(kind == "reuse" for _, _, kind in log)
    assert not any("uncond" in branches for step, branches, _ in log if step in (3, 4, 6, 7, 9))


def test_bad_settings_are_refused():
    for bad, field in [({"rel_l1_thresh": -1}, "rel_l1_thresh"), ({"coefficients": []}, "coefficients"),
                       ({"coefficients": [1.0, "x"]}, "coefficients"), ({"coefficients": 3}, "coefficients"),
                       ({"modulated_input": "e0"}, "modulated_input"), ({"warmup": 0}, "warmup"), ({"final": -1}, "final")]:
        with pytest.raises(ConfigError, match=field):
            cachekit.load_config({"policy": [{"type": "teacache", **bad}]})
    with pytest.raises(PlanError, match="block stack only"):
        cachekit.enable(tiny_wan_pipeline(), {"policy": [{"type": "teacache", "sites": {"kinds": ["attn"]}}]})
