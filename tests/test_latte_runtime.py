"""End to end on a real tiny LattePipeline: the plan is executed exactly and disable() restores the model."""

import sys

import pytest
import torch

import cachekit
from cachekit import AdapterError, ConfigError, EnableError, PlanError
from cachekit.demo import demo_call, tiny_latte_pipeline
from tests.conftest import run
from tests.recording import Recorder
from tests.test_plan import SmallChange

ALL_SITES = {"policy": [{"type": "reuse", "interval": 2, "sites": {"kinds": ["attn", "mlp"]}, "window": {"start": 0.3, "end": 0.9}}]}


def executed_matches_plan(session):
    report, plan = session.report(), session.plan
    expected = {node: a.kind for node, a in plan.nodes() if a.kind != "skip"}
    assert report.executed == expected
    return report


def hooks_left(pipe):
    names = []
    for name, module in pipe.transformer.named_modules():
        registry = module.__dict__.get("_diffusers_hook")
        if registry is not None and "cachekit" in registry.hooks:
            names.append(name)
    return names


def test_reuse_executes_plan_exactly(latte, latte_reference):
    session = cachekit.enable(latte, ALL_SITES, profile=True)
    out = run(latte)
    report = executed_matches_plan(session)
    assert report.counts()["reuse"] == session.plan.counts()["reuse"] > 0
    assert not torch.equal(out, latte_reference())
    assert report.hit_rates["attn.spatial"] > 0 and report.hit_rates["denoiser"] == 0
    assert report.measured_peak_cache_bytes == report.predicted_peak_cache_bytes > 0
    assert report.prediction_basis == "seconds" and report.predicted_speedup > 0  # timed: its value is not asserted
    assert "blocks.0.attn.cross [cond]" in report.text()


def test_interval_one_is_bitwise_uncached_and_warns(latte, latte_reference):
    session = cachekit.enable(latte, {"policy": [{"type": "reuse", "interval": 1, "sites": {"kinds": ["attn", "mlp", "block"]}}]})
    with pytest.warns(UserWarning, match="policy 'reuse' made no decision other than compute in this run: its plan"):
        out = latte(**demo_call(latte, steps=10)).frames
    assert torch.equal(out, latte_reference())
    assert session.report().counts() == {"compute": session.plan.graph.number_of_nodes()}


def test_disable_restores_exactly(latte, latte_reference):
    before = {name: dict(m.__dict__) for name, m in latte.transformer.named_modules()}
    scheduler_before = dict(latte.scheduler.__dict__)
    session = cachekit.enable(latte, ALL_SITES)
    assert len(hooks_left(latte)) == len(session.planned_sites)
    run(latte)
    cachekit.disable(latte)
    assert hooks_left(latte) == []
    assert not hasattr(latte.transformer, "_cachekit_session")
    for name, module in latte.transformer.named_modules():
        assert set(module.__dict__) == set(before[name]), name
    assert set(latte.scheduler.__dict__) == set(scheduler_before)
    assert torch.equal(run(latte), latte_reference())


def test_plan_is_reused_and_profiled_once(latte, monkeypatch):
    from cachekit import cost

    calls = []
    real = cost.measure_sites
    monkeypatch.setattr(cost, "measure_sites", lambda *a: calls.append(1) or real(*a))
    session = cachekit.enable(latte, ALL_SITES)
    first = run(latte)
    plan = session.plan
    second = run(latte)
    assert session.plan is plan and session.plans_built == 1 and len(calls) == 1
    assert torch.equal(first, second)
    run(latte, steps=8)  # a new plan, the same shapes: measured once per session
    assert session.plans_built == 2 and len(calls) == 1


def test_hot_path_never_touches_networkx(latte):
    session = cachekit.enable(latte, ALL_SITES)
    run(latte)  # builds and caches the plan
    touched = []

    def profiler(frame, event, arg):
        if event == "call" and "networkx" in frame.f_code.co_filename:
            current = session.runtime.run
            if current is not None and current.present:
                touched.append(frame.f_code.co_name)

    sys.setprofile(profiler)
    try:
        run(latte)
    finally:
        sys.setprofile(None)
    assert touched == []
    executed_matches_plan(session)


def test_exception_mid_run_resets_state(latte):
    session = cachekit.enable(latte, ALL_SITES)
    expected = run(latte)
    block = latte.transformer.transformer_blocks[1]
    state = {"calls": 0}

    def fail_once(module, args):
        state["calls"] += 1
        if state["calls"] == 9:
            raise RuntimeError("boom")

    handle = block.register_forward_pre_hook(fail_once)
    with pytest.raises(RuntimeError, match="boom"):
        run(latte)
    handle.remove()
    assert session.runtime.run is None
    assert torch.equal(run(latte), expected)


def test_shape_change_mid_run_turns_caching_off():
    pipe = tiny_latte_pipeline()
    model = pipe.transformer
    session = cachekit.enable(model, {"policy": [{"type": "reuse", "window": {"start": 0.0, "end": 1.0}}]},
                              num_inference_steps=4, cfg=True)
    args = dict(timestep=torch.tensor([500, 500]), encoder_hidden_states=torch.randn(2, 6, 32), return_dict=False)
    x = torch.randn(2, 4, 4, 8, 8)
    with torch.no_grad():
        model(x, **args)
        bigger = dict(args, timestep=torch.tensor([500] * 4), encoder_hidden_states=torch.randn(4, 6, 32))
        with pytest.warns(UserWarning, match=r"input shape changed mid-run from \(2, 4, 4, 8, 8\) to \(4, 4, 4, 8, 8\)"):
            model(torch.cat([x, x]), **bigger)
        assert session.runtime.run is not None and not session.runtime.run.caching
        model(x, **args)
        model(x, **args)
        assert session.runtime.run is None  # the 4-step run ended
        first = model(x, **args)[0]  # a fresh run caches again
        assert session.runtime.run.caching
    cachekit.disable(model)
    with torch.no_grad():
        assert torch.equal(first, model(x, **args)[0])


def test_bare_transformer_with_cfg_matches_pipeline_decisions():
    pipe = tiny_latte_pipeline()
    session = cachekit.enable(pipe.transformer, ALL_SITES, num_inference_steps=10, cfg=True)
    assert session.plan_for(10).counts()["reuse"] > 0
    run(pipe)  # the pipeline's 10 calls are counted as 10 steps
    executed_matches_plan(session)


def test_online_policy_runs_on_pipeline(latte):
    policy = SmallChange(sites={"kinds": ["attn.temporal"]}, threshold=0.5, window={"start": 0.3, "end": 1.0})
    session = cachekit.enable(latte, policy)
    run(latte, steps=12)
    report = session.report()
    online = [n for n, a in session.plan.nodes() if a.kind == "online"]
    assert online and all(report.executed[n] in ("compute", "reuse") for n in online)
    assert report.counts().get("reuse", 0) > 0


def test_reconstruct_kernel_path(latte):
    import attrs

    from cachekit import Action, Policy

    @attrs.frozen(kw_only=True)
    class Extrapolate(Policy):
        type_name = "test-extrapolate"

        def plan_site(self, site, branch, steps, timesteps):
            out, computed = {}, [steps[0] - 1]  # the step before the window computes
            for i, step in enumerate(steps):
                if i % 2 == 0:
                    out[step] = Action.compute()
                    computed.append(step)
                else:
                    sources = [(s, site.name, branch) for s in computed[-2:]]
                    out[step] = Action.reconstruct("linear", sources, {"weight": 0.5})
            return out

    session = cachekit.enable(latte, Extrapolate(sites={"kinds": ["attn.spatial"]}, window={"start": 0.4, "end": 1.0}))
    with Recorder(session, ["blocks.0.attn.spatial", "blocks.1.attn.spatial"]) as recorder:
        run(latte)
    report = executed_matches_plan(session)
    assert report.counts()["reconstruct"] == session.plan.counts()["reconstruct"] == 3 * 2 * 2
    for node, action in session.plan.nodes():  # the kernel's formula on the outputs computed before
        if action.kind == "reconstruct":
            (previous,), (last,) = (recorder.outputs[source] for source in action.sources)
            assert torch.equal(recorder.outputs[node][0], last + (last - previous) * 0.5), node


def test_enabled_context_manager(latte, latte_reference):
    with cachekit.enabled(latte, "naive-reuse") as session:
        run(latte)
    assert session.report().counts()["reuse"] > 0
    assert hooks_left(latte) == [] and torch.equal(run(latte), latte_reference())


def test_bad_input_is_clear_and_loses_nothing(latte, latte_reference):
    with pytest.raises(ConfigError, match="unknown policy 'fastest'|neither a preset"):
        cachekit.enable(latte, "fastest")
    with pytest.raises(PlanError, match=r"policy 'reuse' selects no site .*site kinds attn.cross, attn.spatial"):
        cachekit.enable(latte, {"policy": [{"type": "reuse", "sites": {"kinds": ["attn.joint"]}}]})
    with pytest.raises(AdapterError, match=r"no cachekit adapter for Linear; registered adapters: .*latte \(LatteTransformer3DModel\).*\. To add one, subclass cachekit.Adapter"):
        cachekit.enable(torch.nn.Linear(2, 2), "reuse", num_inference_steps=4)
    with pytest.raises(EnableError, match="needs num_inference_steps"):
        cachekit.enable(latte.transformer, "reuse")
    session = cachekit.enable(latte, "naive-reuse")
    with pytest.raises(EnableError, match="already has a cachekit session; call cachekit.disable\\(\\) first"):
        cachekit.enable(latte, "reuse")
    cachekit.disable(latte)
    with pytest.raises(EnableError, match="has no cachekit session"):
        cachekit.disable(latte)
    # a window outside the run fails when the run starts, before the transformer is called
    cachekit.enable(latte, {"policy": [{"type": "reuse", "window": {"start": 5, "end": 40, "unit": "step"}}]})
    with pytest.raises(PlanError, match=r"window \[5, 40\) lies outside the 10-step run"):
        run(latte)
    cachekit.disable(latte)
    assert hooks_left(latte) == [] and torch.equal(run(latte), latte_reference())
    del session


def test_refuses_on_top_of_diffusers_cache(latte, latte_reference):
    from diffusers import PyramidAttentionBroadcastConfig

    latte.transformer.enable_cache(PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                                   current_timestep_callback=lambda: 0))
    with pytest.raises(EnableError, match="has diffusers' own cache enabled; call transformer.disable_cache\\(\\) first"):
        cachekit.enable(latte, "reuse")
    latte.transformer.disable_cache()
    assert torch.equal(run(latte), latte_reference())


def test_prediction_falls_back_to_flops_when_timing_fails(latte, monkeypatch):
    from cachekit import cost

    def broken(*args, **kwargs):
        raise RuntimeError("no clock")

    monkeypatch.setattr(cost, "time_sites", broken)
    session = cachekit.enable(latte, ALL_SITES, profile=True)
    with pytest.warns(UserWarning, match=r"could not time the model \(RuntimeError: no clock\); predicting from FLOP counts"):
        latte(**demo_call(latte, steps=10))
    report = session.report()
    assert report.prediction_basis == "flops" and report.predicted_speedup > 1.0
