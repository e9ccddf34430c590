"""``easycache``: the transformation-rate rule on a hand-computed sequence (decide/observe driven as the
runtime drives them), and runs on split (Wan) and batched (CogVideoX) CFG, alone and beside cfg_cache."""

import pytest
import torch

import cachekit
from cachekit.errors import ConfigError, PlanError
from cachekit.policies.easycache import EasyCache
from cachekit.policy import OnlineContext
from cachekit.sites import Site
from tests.pipelines import cogvideox_call, tiny_cogvideox_pipeline, tiny_wan_pipeline, wan_call

torch.set_num_threads(1)

STACK = Site("stack", "stack", "blocks.0", span=("blocks.0", "blocks.1"))


def drive(policy, inputs, outputs):
    """Run ``policy`` over the steps as the runtime does: planned computes are observed; an online
    step asks ``decide`` and, when it says compute, observes the output. Returns 'C'/'S' per step."""
    plan = policy.plan_site(STACK, "cond", range(len(inputs)), cachekit.policy.RunInfo(num_steps=len(inputs)))
    state, pattern = {}, []
    for step, (x, y) in enumerate(zip(inputs, outputs)):
        context = OnlineContext(step, None, "cond", STACK, (x,), {}, state, {}, len(inputs), ("cond",))
        if plan[step].kind == "online" and policy.decide(context):
            pattern.append("S")
            continue
        policy.observe(context, (y,))
        pattern.append("C")
    return "".join(pattern), state


def test_rule_on_a_hand_computed_sequence():
    """in_t = t, out_t = 10 + t^2 (mean |.| of constant tensors), warmup 2, last step computed,
    threshold 0.25:
    step 1: k = |11 - 10| / |1 - 0| = 1;
    steps 2, 3, 4 add k |in_s - in_{s-1}| / |out_1| = 1/11 each: 0.091, 0.182 (skip), 0.273 (compute);
    step 4: k = |26 - 11| / |4 - 1| = 5; step 5 adds 5/26 = 0.192 (skip), step 6 0.385 (compute);
    step 6: k = |46 - 26| / |6 - 4| = 10; step 7 adds 10/46 = 0.217 (skip), step 8 0.435 (compute);
    step 9 is the last: computed."""
    inputs = [torch.full((2, 3), float(t)) for t in range(10)]
    outputs = [torch.full((2, 3), 10.0 + t * t) for t in range(10)]
    pattern, state = drive(EasyCache(threshold=0.25, warmup=2), inputs, outputs)
    assert pattern == "CCSSCSCSCC"
    assert state["rate"] == pytest.approx((91 - 74) / (9 - 8))  # the rate between the last two computed steps
    # a looser threshold skips more, a tighter one fewer: the test can fail
    # 0.3: 0.091, 0.182, 0.273 (skip), 0.364 at 5 (compute, k = 24/4 = 6), 6/35 = 0.171 (skip), 0.343 at 7
    # (compute, k = 24/2 = 12), 12/59 = 0.203 (skip), 9 the last
    assert drive(EasyCache(threshold=0.3, warmup=2), inputs, outputs)[0] == "CCSSSCSCSC"
    assert drive(EasyCache(threshold=0.0, warmup=2), inputs, outputs)[0] == "C" * 10
    # the rate needs two computed steps: warm-up 1 computes step 1 online (no rate yet), then decides
    assert drive(EasyCache(threshold=0.25, warmup=1), inputs, outputs)[0] == "CCSSCSCSCC"


def test_input_change_is_counted_from_the_previous_step_computed_or_not():
    """Each skipped step adds the input change since the previous step, not since the last computed one
    (which would add |2.5 - 1| / 11 at step 3, reaching 0.227 and computing there)."""
    inputs = [torch.full((4,), v) for v in (0.0, 1.0, 2.0, 2.5, 3.0, 3.5, 4.0)]
    outputs = [torch.full((4,), 10.0 + v) for v in (0.0, 1.0, 2.0, 2.5, 3.0, 3.5, 4.0)]
    # k = 1 from step 1; |out_1| = 11: steps 2.. add 1/11, 0.5/11, 0.5/11, 0.5/11 = 0.091, 0.136, 0.182, 0.227
    pattern, _ = drive(EasyCache(threshold=0.2, warmup=2, final=0), inputs, outputs)
    assert pattern == "CCSSSCS"  # step 5 reaches 0.227 >= 0.2; step 6 restarts: k (1.0) * 0.5 / |out_5| 13.5


def stack_log(session):
    return session.runtime.last_run.history("stack")


@pytest.mark.parametrize("family, build, call", [("wan", tiny_wan_pipeline, wan_call),
                                                 ("cogvideox", tiny_cogvideox_pipeline, cogvideox_call)])
def test_split_and_batched_cfg_skip_reuse_and_forecast(family, build, call):
    pipe = build()
    expected = pipe(**call(pipe, 10)).frames
    for order, kind in ((0, "reuse"), (1, "reconstruct")):
        config = {"policy": [{"type": "easycache", "threshold": 0.3, "warmup": 2, "order": order}]}
        with cachekit.enabled(pipe, config) as session:
            got = pipe(**call(pipe, 10)).frames
            log = stack_log(session)
        skipped = {step for step, _, k in log if k == kind}
        assert skipped and skipped <= set(range(2, 9))
        assert {b for step, branches, k in log if k == kind for b in branches} == {"uncond", "cond"}
        assert all(k == "compute" for step, _, k in log if step in (0, 1, 9))
        assert not torch.equal(got, expected)
    with cachekit.enabled(pipe, {"policy": [{"type": "easycache", "threshold": 0.0, "warmup": 2}]}):
        with pytest.warns(UserWarning, match="no decision other than compute"):
            assert torch.equal(pipe(**call(pipe, 10)).frames, expected)  # threshold 0: every step computes


@pytest.mark.parametrize("build, call, scope", [(tiny_wan_pipeline, wan_call, "call"),
                                                (tiny_cogvideox_pipeline, cogvideox_call, "branch")])
def test_beside_cfg_cache(build, call, scope):
    """cfg_cache rebuilds the uncond output at the denoiser between full CFG steps, so the stack is not
    called on that branch there; easycache still skips the stack on the branches that are called."""
    pipe = build()
    config = {"policy": [{"type": "easycache", "threshold": 0.3, "warmup": 2, "scope": scope},
                         {"type": "cfg_cache", "interval": 3, "window": {"start": 0.2, "end": 1.0}}]}
    with cachekit.enabled(pipe, config) as session:
        pipe(**call(pipe, 10))
        log = stack_log(session)
        counts = session.report().counts()
    assert counts["reconstruct"] > 0  # cfg_cache's uncond rebuilds
    assert any(kind == "reuse" for _, _, kind in log)
    assert not any("uncond" in branches for step, branches, _ in log if step in (3, 4, 6, 7, 9))


def test_bad_settings_are_refused():
    for bad, field in [({"threshold": -0.1}, "threshold"), ({"warmup": 0}, "warmup"), ({"final": -1}, "final"),
                       ({"order": 2}, "order"), ({"scope": "run"}, "scope")]:
        with pytest.raises(ConfigError, match=field):
            cachekit.load_config({"policy": [{"type": "easycache", **bad}]})
    pipe = tiny_wan_pipeline()
    with pytest.raises(PlanError, match="block stack only"):
        cachekit.enable(pipe, {"policy": [{"type": "easycache", "sites": {"kinds": ["block"]}}]})
    assert not hasattr(pipe.transformer, "_cachekit_session")
