"""Online decisions per branch: the docs' example runs as written, alone and beside cfg_cache; a
step-level decision (FirstBlockCache-like) is expressible; online state counts in the cache bytes."""

import pathlib
import re
import types
import warnings

import attrs
import torch

import cachekit
from cachekit import Action, OnlineContext, OnlinePolicy
from cachekit.demo import demo_call, tiny_latte_pipeline
from cachekit.policies.cfg_cache import CfgCache
from tests.recording import Recorder, check_cached_values

torch.set_num_threads(1)

DOC = pathlib.Path(__file__).parent.parent / "docs" / "writing-a-policy.md"


def docs_module(name: str) -> types.ModuleType:
    """The ```python block of writing-a-policy.md that starts with ``# name``, as a module."""
    block = next(b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S) if b.startswith(f"# {name}"))
    module = types.ModuleType(name.removesuffix(".py"))
    exec(compile(block, str(DOC), "exec"), module.__dict__)
    return module


def run(pipe, steps=12):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pipe(**demo_call(pipe, steps=steps)).frames


def decisions(report, site_filter=lambda name: True):
    return {node: kind for node, kind in report.executed.items() if site_filter(node[1])}


def test_docs_online_example_alone_and_beside_cfg_cache():
    InputDelta = docs_module("input_delta.py").InputDelta
    online = InputDelta(sites={"kinds": ["attn.temporal"]}, window={"start": 0.1, "end": 0.9}, threshold=0.5)
    pipe = tiny_latte_pipeline()
    session = cachekit.enable(pipe, online)
    run(pipe)
    alone = session.report()
    assert alone.counts().get("reuse", 0) > 0
    cachekit.disable(pipe)

    # cfg_cache makes some denoiser calls carry only the cond branch: the example sees its branch's input either way
    session = cachekit.enable(pipe, [online, CfgCache(interval=2, window={"start": 0.3, "end": 1.0})])
    with Recorder(session, ["blocks.0.attn.temporal", "blocks.1.attn.temporal"]) as recorder:
        run(pipe)
    report = session.report()
    # each reuse returns the output its branch computed last
    assert check_cached_values(session, recorder) == report.counts()["reuse"]
    executed = report.executed
    online_nodes = [n for n, a in session.plan.nodes() if a.kind == "online"]
    assert online_nodes and all(executed.get(n, "skip") in ("compute", "reuse", "skip") for n in online_nodes)
    skipped_uncond = [s for s in range(12) if executed[(s, "denoiser", "uncond")] != "compute"]
    assert skipped_uncond and report.counts()["reuse"] > 0
    for step in skipped_uncond:  # the uncond branch is not called where cfg_cache rebuilds it
        assert (step, "blocks.0.attn.temporal", "uncond") not in executed


@attrs.frozen(kw_only=True)
class FirstBlockSkip(OnlinePolicy):
    """Step-level decision per branch: the first block always computes; when its output moved less than
    ``threshold`` since the previous step, every later block of this step reuses, else all compute."""

    type_name = "test-first-block-skip"
    threshold: float = 0.5
    first: str = "blocks.0.spatial"

    def plan_site(self, site, branch, steps, timesteps):
        anchor = (steps[0], site.name, branch)
        return {steps[0]: Action.compute(), **{s: Action.online(anchor) for s in steps[1:]}}

    def decide(self, context: OnlineContext) -> bool:
        if context.site.name == self.first:
            return False
        shared, key = context.shared, ("reuse", context.step)
        if key not in shared:
            now, before = shared.get("now"), shared.get("before")
            shared[key] = before is not None and float((now - before).abs().mean() / before.abs().mean()) < self.threshold
        return shared[key]

    def observe(self, context: OnlineContext, output: tuple) -> None:
        if context.site.name == self.first:
            context.shared["before"] = context.shared.get("now")
            context.shared["now"] = output[0]


def test_step_level_online_decision_per_branch():
    pipe = tiny_latte_pipeline()
    policy = FirstBlockSkip(sites={"kinds": ["block"]}, window={"start": 0.2, "end": 1.0})
    session = cachekit.enable(pipe, policy)
    run(pipe)
    report = session.report()
    later = [s.name for s in session.plan.sites if s.kind == "block" and s.name != policy.first]
    reused_steps = set()
    for step in range(report.num_steps):
        for branch in ("uncond", "cond"):
            kinds = {report.executed[(step, name, branch)] for name in later}
            assert len(kinds) == 1, (step, branch, kinds)  # the whole step follows one decision
            assert report.executed[(step, policy.first, branch)] == "compute"
            if kinds == {"reuse"}:
                reused_steps.add(step)
    assert reused_steps
    # the first block's last two outputs per branch, held in the shared state, count beside the stored blocks
    block_output = 4 * 16 * 64 * 4  # one branch: (4 frames, 16 tokens, 64 channels) float32
    assert report.measured_peak_cache_bytes == report.predicted_peak_cache_bytes + 2 * 2 * block_output


def test_docs_online_example_beside_the_fastercache_preset():
    """The preset's cfg_cache makes calls carry one branch at some steps, its fastercache reconstructs
    the self-attention; the example decides the cross-attention per branch beside them."""
    InputDelta = docs_module("input_delta.py").InputDelta
    pipe = tiny_latte_pipeline()
    online = InputDelta(sites={"kinds": ["attn.cross"]}, window={"start": 0.1, "end": 0.9}, threshold=0.5)
    session = cachekit.enable(pipe, [*cachekit.load_config("fastercache").policies, online])
    attention = [s.name for s in session.adapter.sites() if s.kind.startswith("attn.")]
    with Recorder(session, attention) as recorder:
        run(pipe)
    report = session.report()
    # the cross-attention's reuses return their branch's latest computed output; the self-attention's
    # rebuilt outputs are the plan's kernel on the outputs their sources computed
    cached = [node for node, kind in report.executed.items() if node[1] != "denoiser" and kind != "compute"]
    assert check_cached_values(session, recorder) == len(cached)
    assert set(report.executed) == {n for n, a in session.plan.nodes() if a.kind != "skip"}
    cross = {n: k for n, k in report.executed.items() if n[1].endswith("attn.cross")}
    assert set(cross.values()) == {"compute", "reuse"} and report.counts()["reconstruct"] > 0
    assert any(n[2] == "cond" for n, k in cross.items() if k == "reuse")
