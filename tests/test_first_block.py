"""``first_block``: diffusers' FirstBlockCache bitwise in compat mode, and DBCache's Fn/Bn, warm-up and
skip limit on the block stack."""

import attrs
import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig

import cachekit
from cachekit.errors import ConfigError, PlanError
from tests.pipelines import (cogvideox_call, model_call, tiny_cogvideox_pipeline, tiny_hunyuan_video_pipeline,
                             tiny_wan_pipeline, wan_call)

torch.set_num_threads(1)

FAMILIES = {"wan": (tiny_wan_pipeline, wan_call), "cogvideox": (tiny_cogvideox_pipeline, cogvideox_call)}


@pytest.mark.parametrize("family, threshold", [("wan", 0.2), ("wan", 0.5), ("cogvideox", 0.5)])
def test_compat_equals_diffusers_first_block_cache_bitwise(family, threshold):
    build, call = FAMILIES[family]
    pipe = build()
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    expected = pipe(**call(pipe, 10)).frames
    pipe.transformer.disable_cache()
    config = {"policy": [{"type": "first_block", "threshold": threshold, "compat": "diffusers"}]}
    with cachekit.enabled(pipe, config) as session:
        got = pipe(**call(pipe, 10)).frames
        counts = session.report().counts()
    assert torch.equal(got, expected)
    assert counts.get("reuse", 0) > 0  # the threshold really skipped steps


def test_first_step_computes_and_is_observed():
    pipe = tiny_wan_pipeline()
    with cachekit.enabled(pipe, {"policy": [{"type": "first_block", "threshold": 10.0}]}) as session:
        pipe(**wan_call(pipe, 6))
        grid = session.report().to_dict()
    rows = {row["site"]: row["executed"] for row in grid["grid"]} if "grid" in grid else None
    counts = session.report().counts()
    # a huge threshold reuses at every step after the first one of each branch: 2 branches x 1 compute
    assert counts["reuse"] == 2 * 5, (counts, rows)


def test_warmup_and_max_skips_bound_the_skips():
    pipe = tiny_wan_pipeline()
    config = {"policy": [{"type": "first_block", "threshold": 10.0, "warmup": 2, "max_skips": 2}]}
    with cachekit.enabled(pipe, config) as session:
        pipe(**wan_call(pipe, 10))
    stack = [kind for step, branches, kind in session.runtime.last_run.history("stack") if branches == ("cond",)]
    assert stack == ["compute", "compute", "reuse", "reuse", "compute", "reuse", "reuse", "compute", "reuse", "reuse"]


@pytest.mark.parametrize("order", [1, 2])
def test_order_forecasts_the_skipped_residual_from_the_computed_ones(order):
    """DBCache + TaylorSeer: after three computed steps every skip adds the Taylor forecast of the
    stack's residual (last block's output minus first block's input) from the last ``order + 1``."""
    pipe = tiny_wan_pipeline()
    blocks = pipe.transformer.blocks
    seen = {"in": [], "out": []}
    handles = [blocks[1].register_forward_pre_hook(lambda m, a, k: seen["in"].append(a[0] if a else k["hidden_states"]),
                                                   with_kwargs=True),
               blocks[-1].register_forward_hook(lambda m, a, out: seen["out"].append(out))]
    config = {"policy": [{"type": "first_block", "threshold": 10.0, "warmup": 3, "order": order}]}
    with cachekit.enabled(pipe, config):
        pipe(**wan_call(pipe, 6))
    for handle in handles:
        handle.remove()
    # the last 12 calls are the run's (the first call's profiling forwards come before), "cond" first
    residual = [(o - i) for i, o in zip(seen["in"], seen["out"])][-12:][0::2]
    r = residual[:3]
    for step in (3, 4, 5):
        if order == 1:
            expected = r[2] + (r[2] - r[1]) * (step - 2)
        else:
            d1, d1_prev = r[2] - r[1], r[1] - r[0]
            expected = r[2] + d1 * (step - 2) + (d1 - d1_prev) * (step - 2) ** 2 / 2
        assert torch.allclose(residual[step], expected, atol=1e-5, rtol=1e-4), step
    assert not torch.allclose(residual[3], r[2], atol=1e-5)  # not the last residual reused


def test_blocks_kept_at_both_ends_stay_out_of_the_stack():
    pipe = tiny_hunyuan_video_pipeline()
    model = pipe.transformer
    blocks = [f"transformer_blocks.{i}" for i in range(len(model.transformer_blocks))]
    blocks += [f"single_transformer_blocks.{i}" for i in range(len(model.single_transformer_blocks))]
    expected = pipe(**model_call("hunyuan_video", pipe, 4)).frames
    config = {"policy": [{"type": "first_block", "first_blocks": 1, "last_blocks": 1, "threshold": 0.0}]}
    with cachekit.enabled(pipe, config) as session:
        stack = next(s for s in session.planned_sites if s.name == "stack")
        assert stack.span == tuple(blocks[1:-1]) and stack.head == (blocks[0],)
        got = pipe(**model_call("hunyuan_video", pipe, 4)).frames
    assert torch.equal(got, expected)  # threshold 0: every step computes, through the stack's hooks


def test_disable_restores_every_block():
    pipe = tiny_wan_pipeline()
    expected = pipe(**wan_call(pipe, 4)).frames  # the pipeline's cache_context gives the model a hook registry
    before = {name: m.forward for name, m in pipe.transformer.named_modules()}
    hooked = {name for name, m in pipe.transformer.named_modules() if hasattr(m, "_diffusers_hook")}
    with cachekit.enabled(pipe, {"policy": [{"type": "first_block", "threshold": 1.0}]}):
        pipe(**wan_call(pipe, 4))
    assert {name for name, m in pipe.transformer.named_modules() if hasattr(m, "_diffusers_hook")} == hooked
    assert all(m.forward == before[name] for name, m in pipe.transformer.named_modules())
    assert torch.equal(pipe(**wan_call(pipe, 4)).frames, expected)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="first_blocks"):
        cachekit.load_config({"policy": [{"type": "first_block", "first_blocks": 2, "compat": "diffusers"}]})
    pipe = tiny_wan_pipeline()
    with pytest.raises(PlanError, match="leaves none to cache"):
        cachekit.enable(pipe, {"policy": [{"type": "first_block", "first_blocks": 1, "last_blocks": 5}]})
    assert not hasattr(pipe.transformer, "_cachekit_session")


def test_the_report_counts_online_decisions_and_their_time():
    pipe = tiny_wan_pipeline()
    with cachekit.enabled(pipe, {"policy": [{"type": "first_block", "threshold": 0.3}]}) as session:
        pipe(**wan_call(pipe, 6))
        report = session.report()
    # each branch's first step computes and is observed; the 5 later steps of 2 branches decide
    assert report.decisions == 2 * 5 and report.decide_seconds > 0
    assert "online decisions: 10" in report.text() and report.to_dict()["decisions"] == 10


def test_an_online_run_is_predicted_from_the_decisions_it_took():
    """The prediction of a plan decided at run time counts the stack's skips as they happened: none
    at threshold 0 (1.00x), most at a huge threshold, and between for a threshold in between."""
    speedups = []
    for threshold in (0.0, 0.1, 10.0):
        pipe = tiny_wan_pipeline()
        with cachekit.enabled(pipe, {"policy": [{"type": "first_block", "threshold": threshold}]}) as session:
            pipe(**wan_call(pipe, 8))
            report = session.report()
        skips = sum(kind == "reuse" for (_, site, _), kind in report.executed.items() if site == "stack")
        speedups.append((report.predicted_speedup, skips))
    (none, zero), (some, middle), (most, many) = speedups
    assert zero == 0 and none == pytest.approx(1.0) and 0 < middle < many == 2 * 7, speedups
    assert none < some and none < most, speedups  # (the costs are timed: some and most are not compared)


def test_the_stack_is_costed_from_its_first_block_to_its_last(latte):
    """The cost model measures the stack's span (its FLOPs are its blocks'), so a skipped stack is
    predicted to save all of them, not the first block's alone."""
    from cachekit.cost import measure_sites

    pipe = latte
    session = cachekit.enable(pipe, {"policy": [{"type": "first_block", "threshold": 0.1}]})
    adapter, sites = session.runtime.adapter, session.runtime.sites
    stack = next(s for s in sites if s.name == "stack")
    blocks = [attrs.evolve(stack, name=path, kind="block", module_path=path, span=(), head=()) for path in stack.span]
    assert len(blocks) >= 2
    args, kwargs = adapter.example_call(1)
    with torch.no_grad():
        _, flops, _ = measure_sites(adapter, [*sites, *blocks], lambda: pipe.transformer(*args, **kwargs), 1)
    cachekit.disable(pipe)
    assert flops["stack"] == pytest.approx(sum(flops[b.name] for b in blocks)) and flops["stack"] > flops[blocks[0].name]
