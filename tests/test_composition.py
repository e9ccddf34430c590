"""Composition is the planner's job: policies state what they want, the planner binds sources to
what really computed, and every combination of built-in policies either plans and validates or is
refused with one line naming both policies and the node."""

import warnings
from types import SimpleNamespace

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cachekit
from cachekit import Action, PlanError, build_plan
from cachekit.adapters.cogvideox import CogVideoXAdapter
from cachekit.adapters.latte import LatteAdapter
from cachekit.adapters.wan import WanAdapter
from cachekit.plan import PRODUCERS
from cachekit.policies.cfg_cache import CfgCache
from cachekit.policies.fastercache import FasterCache
from cachekit.policies.pab import Pab
from cachekit.policies.reuse import Reuse
from cachekit.policies.step_reuse import StepReuse
from cachekit.policy import COMPUTE, ONLINE, RECONSTRUCT, REUSE, SKIP, OnlinePolicy
from tests import toy
from tests.test_plan import BRANCHES, synthetic_sites

BLOCKS = 2
MODELS = {
    "latte": (LatteAdapter(SimpleNamespace(transformer_blocks=[None] * BLOCKS)).sites(), "batched", ("uncond", "cond")),
    "cogvideox": (CogVideoXAdapter(SimpleNamespace(transformer_blocks=[None] * BLOCKS)).sites(), "batched", ("uncond", "cond")),
    "wan": (WanAdapter(SimpleNamespace(blocks=[None] * BLOCKS)).sites(), "split", ("cond", "uncond")),
}


@attrs.frozen(kw_only=True)
class Changed(OnlinePolicy):
    """Online everywhere in its window: the plan only bounds it."""

    type_name = "test-changed"

    def plan_site(self, site, branch, steps, run):
        return {s: Action.online() for s in steps}

    def decide(self, context):
        return False

    def observe(self, context, output):
        """Nothing to learn: this policy always computes."""


def assert_sound(plan, call_order, split):
    """Every source is a producer computed before its reader, and reads follow the call order."""
    plan.validate()
    plan.compile(call_order, split)
    for node, action in plan.nodes():
        assert not action.refs
        if action.kind in (REUSE, RECONSTRUCT, ONLINE):
            assert action.sources
        for source in action.sources:
            assert source[1] == node[1] and plan.action(source).kind in PRODUCERS


# -- what was wrong -------------------------------------------------------------------------------


def test_fastercache_interval_three_with_an_earlier_cfg_cache_window():
    policies = [FasterCache(sites={"kinds": ["attn"]}, interval=3, window={"start": 0.4, "end": 1.0}),
                CfgCache(window={"start": 0.2, "end": 1.0})]
    sites = [attrs.evolve(synthetic_sites(1)[0], layout="BCFHW"), *synthetic_sites(1)[1:]]
    plan = build_plan(policies, sites, BRANCHES, 20)
    assert_sound(plan, BRANCHES, False)
    # uncond attention is called only at cfg_cache's full steps (4, 9, 14, 19): a step fastercache
    # rebuilds reads the two latest uncond outputs that computed, however far back
    site = "blocks.0.attn.spatial"
    assert [plan.action((s, site, "uncond")).kind for s in (8, 9, 14, 19)] == [SKIP, RECONSTRUCT, COMPUTE, RECONSTRUCT]
    assert plan.action((9, site, "uncond")).sources == ((3, site, "uncond"), (4, site, "uncond"))
    assert plan.action((19, site, "uncond")).sources == ((4, site, "uncond"), (14, site, "uncond"))
    assert plan.action((10, site, "cond")).sources == ((7, site, "cond"), (8, site, "cond"))


def test_online_policy_composes_with_the_fastercache_preset():
    config = cachekit.load_config("fastercache")
    online = Changed(sites={"kinds": ["block"]}, window={"start": 0.1, "end": 0.9})
    sites = [attrs.evolve(synthetic_sites(2)[0], layout="BCFHW"), *synthetic_sites(2)[1:]]
    plan = build_plan([*config.policies, online], sites, BRANCHES, 50)
    assert_sound(plan, BRANCHES, False)
    # attention under an online block is not planned to run: fastercache reads what did compute
    assert plan.action((30, "blocks.0", "cond")).kind == ONLINE
    assert plan.action((30, "blocks.0.attn.spatial", "cond")).kind == SKIP
    assert plan.counts()["reconstruct"] > 0


def test_policies_are_told_the_run():
    seen = []

    @attrs.frozen(kw_only=True)
    class Records(cachekit.Policy):
        type_name = "test-records"

        def plan_site(self, site, branch, steps, run):
            seen.append((run.num_steps, run.timesteps, run.branches, run.cfg_layout))
            return {}

    build_plan([Records(sites={"kinds": ["denoiser"]}, window={"start": 0.5, "end": 0.8})], synthetic_sites(1),
               BRANCHES, 20, cfg_layout="split")
    assert set(seen) == {(20, None, BRANCHES, "split")}


def test_cfg_cache_plan_does_not_depend_on_knowing_the_timesteps():
    sites = [attrs.evolve(synthetic_sites(1)[0], layout="BCFHW")]
    policy = CfgCache(window={"start": 0.3, "end": 0.8}, switch=0.45, interval=3)
    timesteps = [1000.0 - 50 * i for i in range(20)]
    bare = build_plan([policy], sites, BRANCHES, 20)
    timed = build_plan([policy], sites, BRANCHES, 20, timesteps)
    assert [a for _, a in sorted(bare.nodes())] == [a for _, a in sorted(timed.nodes())]
    # w_low applies before 45% of the 20-step run: at step 8, not at step 10
    assert dict(bare.action((8, "denoiser", "uncond")).params)["w_low"] == pytest.approx(1.2)
    assert dict(bare.action((10, "denoiser", "uncond")).params)["w_low"] == 1.0


@pytest.mark.parametrize("preset", ["reuse", "naive-reuse"])
@pytest.mark.parametrize("model", ["latte", "cogvideox", "wan"])
def test_default_and_naive_reuse_cache_something_on_every_adapter(preset, model):
    sites, layout, order = MODELS[model]
    plan = build_plan(cachekit.load_config(preset).policies, sites, BRANCHES, 20, cfg_layout=layout)
    assert_sound(plan, order, layout == "split")
    assert plan.counts()["reuse"] > 0


def test_overlap_and_window_past_the_run_refused_at_enable_in_one_line():
    toy.register()
    try:
        model = toy.ToyDenoiser()
        overlap = {"policy": [{"type": "reuse", "label": "a", "sites": {"kinds": ["attn"]}},
                              {"type": "fastercache", "label": "b", "window": {"start": 0.5, "end": 1.0}}]}
        with pytest.raises(PlanError, match=r"^policies 'a' and 'b' both claim node \(5, 'blocks.0.attn.spatial', "
                                            r"'uncond'\) at priority 0; [^\n]*$"):
            cachekit.enable(model, overlap, num_inference_steps=10, cfg=True)
        past = {"policy": [{"type": "reuse", "label": "late", "window": {"start": 4, "end": 30, "unit": "step"}}]}
        with pytest.raises(PlanError, match=r"^policy 'late' at blocks.0.attn.spatial: window \[4, 30\) lies outside "
                                            r"the 10-step run[^\n]*$"):
            cachekit.enable(model, past, num_inference_steps=10, cfg=True)
        assert not hasattr(model, "_cachekit_session")
    finally:
        cachekit.reload_plugins(keep_code=False)


# -- any combination ------------------------------------------------------------------------------

KINDS = ["attn", "attn.spatial", "attn.temporal", "attn.joint", "attn.cross", "block", "mlp", "denoiser"]


@st.composite
def windows(draw):
    start = draw(st.integers(0, 8)) / 10
    return {"start": start, "end": draw(st.integers(int(start * 10) + 1, 10)) / 10}


@st.composite
def policies(draw):
    kind = draw(st.sampled_from(["reuse", "step_reuse", "pab", "fastercache", "cfg_cache", "online"]))
    common = {"window": draw(windows()), "priority": draw(st.integers(0, 2))}
    if kind not in ("cfg_cache", "step_reuse"):
        common["sites"] = {"kinds": draw(st.lists(st.sampled_from(KINDS[:-1]), min_size=1, max_size=3, unique=True))}
        if draw(st.booleans()):
            common["sites"]["blocks"] = draw(st.sampled_from(["0", "1", "0-1", "1-"]))
    if kind == "reuse":
        return Reuse(interval=draw(st.integers(1, 5)), **common)
    if kind == "step_reuse":
        return StepReuse(interval=draw(st.integers(1, 4)), **common)
    if kind == "pab":
        return Pab(spatial=draw(st.integers(1, 4)), temporal=draw(st.integers(1, 5)), cross=draw(st.integers(1, 6)), **common)
    if kind == "fastercache":
        interval = draw(st.integers(1, 4))
        return FasterCache(interval=interval, phase=draw(st.one_of(st.none(), st.integers(0, interval - 1))),
                           schedule=draw(st.sampled_from(["linear", "constant"])), batch_guard=draw(st.booleans()), **common)
    if kind == "cfg_cache":
        interval = draw(st.integers(1, 6))
        return CfgCache(interval=interval, phase=draw(st.one_of(st.none(), st.integers(0, interval - 1))),
                        weighting=draw(st.sampled_from(["paper", "compounding"])), **common)
    return Changed(**common)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=st.sampled_from(sorted(MODELS)), chosen=st.lists(policies(), min_size=1, max_size=3),
       steps=st.integers(10, 60), cfg=st.booleans(), timed=st.booleans())
def test_any_built_in_composition_plans_or_is_refused_in_one_line(model, chosen, steps, cfg, timed):
    sites, layout, order = MODELS[model]
    chosen = [attrs.evolve(policy, label=f"p{i}") for i, policy in enumerate(chosen)]
    branches = BRANCHES if cfg else ("cond",)
    timesteps = [999.0 * (1 - i / steps) for i in range(steps)] if timed else None  # as a pipeline sets them
    try:
        plan = build_plan(chosen, sites, branches, steps, timesteps, cfg_layout=layout)
    except PlanError as error:
        message = str(error)
        assert "\n" not in message
        names = [p.name for p in chosen]
        if "both claim node" in message:
            assert sum(f"'{name}'" in message for name in names) == 2 and "(" in message
        elif "selects no site" not in message:  # else: a timestep window on a run without timesteps
            assert not timed and "needs the run's timesteps" in message
        assert message.startswith(("policies '", "policy '")) and any(f"'{name}'" in message for name in names)
        return
    assert_sound(plan, order, layout == "split")


@pytest.mark.parametrize("model", ["cogvideox", "wan"])
def test_enable_with_the_default_config_caches_on_real_pipelines(model):
    from tests.pipelines import cogvideox_call, tiny_cogvideox_pipeline, tiny_wan_pipeline, wan_call

    pipe, call = (tiny_cogvideox_pipeline(), cogvideox_call) if model == "cogvideox" else (tiny_wan_pipeline(), wan_call)
    session = cachekit.enable(pipe)  # the default config, the "quality" preset
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            pipe(**call(pipe, 10))
    finally:
        cachekit.disable(pipe)
    report = session.report()
    assert report.policies == ("taylorseer (taylorseer)",) and report.counts()["reconstruct"] > 0
