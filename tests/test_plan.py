import attrs
import pytest

import cachekit
from cachekit import Action, PlanError, Selector, Site, build_plan
from cachekit.policies.reuse import Reuse
from cachekit.policy import OnlinePolicy


def synthetic_sites(blocks: int) -> list[Site]:
    sites = [Site("denoiser", "denoiser", "")]
    for i in range(blocks):
        sites += [
            Site(f"blocks.{i}", "block", f"blocks.{i}", i, "denoiser", residual=True),
            Site(f"blocks.{i}.attn.spatial", "attn.spatial", f"blocks.{i}.a1", i, f"blocks.{i}"),
            Site(f"blocks.{i}.attn.temporal", "attn.temporal", f"blocks.{i}.a2", i, f"blocks.{i}"),
            Site(f"blocks.{i}.attn.cross", "attn.cross", f"blocks.{i}.a3", i, f"blocks.{i}"),
            Site(f"blocks.{i}.mlp", "mlp", f"blocks.{i}.ff", i, f"blocks.{i}"),
        ]
    return sites


BRANCHES = ("uncond", "cond")


def test_reuse_plan_structure_and_edges():
    plan = build_plan([Reuse(interval=3, window={"start": 0.2, "end": 0.8})], synthetic_sites(2), BRANCHES, 10)
    site = "blocks.1.attn.spatial"
    kinds = [plan.action((s, site, "cond")).kind for s in range(10)]
    # window steps 2..7; compute at 2 and 5, reuse after each
    assert kinds == ["compute"] * 3 + ["reuse", "reuse", "compute", "reuse", "reuse", "compute", "compute"]
    assert plan.action((4, site, "cond")).sources == ((2, site, "cond"),)
    assert set(plan.graph.successors((2, site, "cond"))) == {(3, site, "cond"), (4, site, "cond")}
    # sites no policy selects are not in the plan
    assert {s.name for s in plan.sites} == {"denoiser"} | {f"blocks.{i}.attn.{k}" for i in (0, 1) for k in ("spatial", "temporal")}
    assert plan.peak_live_per_site() == {f"blocks.{i}.attn.{k}": 2 for i in (0, 1) for k in ("spatial", "temporal")}


def test_reuse_liveness_one_tensor_per_site_and_branch():
    plan = build_plan([Reuse(interval=2)], synthetic_sites(3), ("cond",), 20)
    assert set(plan.peak_live_per_site().values()) == {1}
    stored = plan.stored()  # each output is freed right after its last reader
    assert stored[(0, "blocks.0.attn.spatial", "cond")] == (1, "blocks.0.attn.spatial", "cond")
    assert stored[(18, "blocks.0.attn.spatial", "cond")] == (19, "blocks.0.attn.spatial", "cond")


def test_large_plan_builds_and_validates():
    sites = synthetic_sites(28)
    policies = [Reuse(sites={"kinds": ["attn.spatial", "attn.temporal", "attn.cross", "mlp"]}, window={"start": 0.1, "end": 0.9})]
    plan = build_plan(policies, sites, BRANCHES, 50)
    assert plan.graph.number_of_nodes() == 50 * (1 + 28 * 4) * 2  # 11,300 nodes
    # one edge per reuse: each reads the step before it
    assert plan.graph.number_of_edges() == plan.counts()["reuse"] == 28 * 4 * 2 * 20
    compiled = plan.compile(BRANCHES)
    assert len(compiled.ops) == 50 and len(compiled.ops[0]) == len(plan.sites)


def test_overlap_needs_priority():
    a = Reuse(label="a", interval=2)
    b = Reuse(label="b", interval=3, window={"start": 0.5, "end": 1.0})
    with pytest.raises(PlanError, match="policies 'a' and 'b' both claim node .* priority 0"):
        build_plan([a, b], synthetic_sites(1), BRANCHES, 10)
    plan = build_plan([a, attrs.evolve(b, priority=1)], synthetic_sites(1), BRANCHES, 10)
    assert plan.action((6, "blocks.0.attn.spatial", "cond")).policy == "b"
    assert plan.action((3, "blocks.0.attn.spatial", "cond")).policy == "a"


def test_skip_propagates_and_policies_see_called_steps():
    block = Reuse(label="block", sites={"kinds": ["block"]}, interval=2, window={"start": 0.5, "end": 1.0})
    attn = Reuse(label="attn", interval=2)
    plan = build_plan([block, attn], synthetic_sites(1), ("cond",), 10)
    assert [plan.action((s, "blocks.0", "cond")).kind for s in range(5, 10)] == ["compute", "reuse", "compute", "reuse", "compute"]
    # attention is called at 0..5, 7 and 9 only: at 7 its last output is 3 steps old, so it computes
    assert [plan.action((s, "blocks.0.attn.spatial", "cond")).kind for s in range(10)] == [
        "compute", "reuse", "compute", "reuse", "compute", "reuse", "skip", "compute", "skip", "compute"]


@attrs.frozen(kw_only=True)
class ReadsStepSix(cachekit.Policy):
    type_name = "test-reads-six"

    def plan_site(self, site, branch, steps, run):
        return {7: Action.reuse((6, site.name, branch))}


def test_validation_names_the_node_that_reads_an_uncalled_one():
    block = Reuse(label="block", sites={"kinds": ["block"]}, interval=2, window={"start": 0.5, "end": 1.0})
    reader = ReadsStepSix(sites={"kinds": ["attn.spatial"]})
    with pytest.raises(PlanError, match=r"node \(7, 'blocks.0.attn.spatial', 'cond'\) \(reuse by 'test-reads-six'\) reads "
                                        r"\(6, 'blocks.0.attn.spatial', 'cond'\), which is not called"):
        build_plan([block, reader], synthetic_sites(1), ("cond",), 10)


def test_window_errors():
    short = build_plan([Reuse(window={"start": 0.9, "end": 0.95})], synthetic_sites(1), ("cond",), 4)
    assert short.all_compute  # a fraction window may hold no step of a short run: nothing is claimed
    with pytest.raises(PlanError, match="outside the 10-step run"):
        build_plan([Reuse(window={"start": 2, "end": 30, "unit": "step"})], synthetic_sites(1), ("cond",), 10)
    with pytest.raises(PlanError, match="selects no site"):
        build_plan([Reuse(sites={"kinds": ["attn.joint"]})], synthetic_sites(1), ("cond",), 10)


def test_timestep_window_is_strict():
    timesteps = [900.0, 700.0, 500.0, 300.0, 100.0]
    plan = build_plan([Reuse(interval=2, window={"start": 700, "end": 100, "unit": "timestep"})], synthetic_sites(1),
                      ("cond",), 5, timesteps)
    kinds = [plan.action((s, "blocks.0.attn.spatial", "cond")).kind for s in range(5)]
    assert kinds == ["compute", "compute", "compute", "reuse", "compute"]  # window holds 500 and 300 only


def test_predict_with_batch_dependent_costs():
    """A CFG-skipping step calls the denoiser with one branch: it costs the 1-branch call's cost."""
    from cachekit.policies.cfg_cache import CfgCache

    sites = [Site("denoiser", "denoiser", "", layout="BCFHW"), *synthetic_sites(1)[1:]]
    plan = build_plan([CfgCache(interval=2, window={"start": 0.0, "end": 1.0})], sites, BRANCHES, 4)
    measured = plan.predict({2: {"denoiser": 10.0}, 1: {"denoiser": 6.0}}, {}, basis="seconds")
    assert measured.step_fractions == (1.0, 0.6, 1.0, 0.6) and measured.basis == "seconds"
    assert measured.speedup == pytest.approx(4 / 3.2)
    linear = plan.predict({2: {"denoiser": 10.0}}, {})  # a missing branch count scales linearly
    assert linear.step_fractions == (1.0, 0.5, 1.0, 0.5)
    split = plan.predict({1: {"denoiser": 5.0}}, {}, split=True)
    assert split.step_fractions == (1.0, 0.5, 1.0, 0.5)
    with_kernel = plan.predict({2: {"denoiser": 10.0}, 1: {"denoiser": 6.0}}, {}, kernel_cost={("denoiser", "cfg_fft"): 1.0})
    assert with_kernel.step_fractions == (1.0, 0.7, 1.0, 0.7)


def test_predict_known_costs():
    plan = build_plan([Reuse(interval=2, window={"start": 0.0, "end": 1.0})], synthetic_sites(1), ("cond",), 4)
    costs = {"denoiser": 10.0, "blocks.0.attn.spatial": 2.0, "blocks.0.attn.temporal": 3.0}
    sizes = {"blocks.0.attn.spatial": 100, "blocks.0.attn.temporal": 50}
    prediction = plan.predict({1: costs}, sizes)
    assert prediction.step_fractions == (1.0, 0.5, 1.0, 0.5)
    assert prediction.speedup == pytest.approx(4 / 3)
    assert prediction.peak_cache_bytes == 150


@attrs.frozen(kw_only=True)
class SmallChange(OnlinePolicy):
    """Reuse while the site's input moved less than ``threshold`` (relative L1) since the last compute."""

    type_name = "small-change"
    threshold: float = 0.1

    def plan_site(self, site, branch, steps, run):
        anchor = (steps[0], site.name, branch)
        return {s: Action.compute() if s == steps[0] else Action.online(anchor) for s in steps}

    def decide(self, context):
        x, state = context.inputs[0] if context.inputs else context.kwargs["hidden_states"], context.state
        if "ref" not in state:
            return False
        return float((x - state["ref"]).abs().mean() / state["ref"].abs().mean()) < self.threshold

    def observe(self, context, output):
        context.state["ref"] = context.inputs[0] if context.inputs else context.kwargs["hidden_states"]


def test_online_nodes_bound_the_plan():
    policy = SmallChange(sites={"kinds": ["attn.spatial", "attn.temporal"]}, window={"start": 0.5, "end": 1.0})
    plan = build_plan([policy], synthetic_sites(1), ("cond",), 10)
    assert not plan.is_static
    assert plan.counts()["online"] == 4 * 2
    assert plan.peak_live_per_site() == {"blocks.0.attn.spatial": 1, "blocks.0.attn.temporal": 1}
    costs = {"denoiser": 10.0, "blocks.0.attn.spatial": 2.0, "blocks.0.attn.temporal": 3.0}
    prediction = plan.predict({1: costs}, {})
    assert prediction.speedup == 1.0
    assert prediction.speedup_bound == pytest.approx(10 / (6 + 4 * 0.5))


def test_policy_selector_matching():
    sites = synthetic_sites(4)
    assert [s.name for s in Selector(kinds=["attn"], blocks="1-2").select(sites)] == [
        f"blocks.{i}.attn.{k}" for i in (1, 2) for k in ("spatial", "temporal", "cross")]
    assert [s.name for s in Selector(names=["*.mlp"], blocks="3-").select(sites)] == ["blocks.3.mlp"]
    assert cachekit.Selector(blocks=[0, 2]).blocks == "0,2"


def test_fastercache_plan_edges_and_liveness():
    from cachekit.policies.fastercache import FasterCache

    plan = build_plan([FasterCache(sites={"kinds": ["attn"]}, interval=3, window={"start": 0.2, "end": 1.0})],
                      synthetic_sites(2), ("cond",), 20)
    site = "blocks.1.attn.temporal"
    node = (8, site, "cond")
    action = plan.action(node)
    assert action.kind == "reconstruct" and action.kernel == "linear"
    assert set(plan.graph.predecessors(node)) == {(4, site, "cond"), (7, site, "cond")}
    # w rises 0 -> 1 over the rebuilt steps 5, 6, 8, ..., 17, 18, one value per step on every site
    assert dict(action.params)["weight"] == pytest.approx(3 / 13)
    assert dict(plan.action((8, "blocks.0.attn.spatial", "cond")).params)["weight"] == pytest.approx(3 / 13)
    assert set(plan.peak_live_per_site().values()) == {2}
