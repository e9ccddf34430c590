"""Every model adapter on a real tiny diffusers pipeline of its family, with CFG and the
``fastercache`` preset: executed decisions equal the plan, outputs are finite, an all-compute plan
is bitwise equal to uncached, ``disable()`` restores bitwise, every site kind is reused at least
once, and the uncond branch really skips the blocks where CFG-Cache plans it (counted as the
samples entering the first block)."""

import warnings

import pytest
import torch

import cachekit
from cachekit.sites import Site
from tests.pipelines import BUILDERS, model_call

torch.set_num_threads(1)

STEPS = 12
ALL_COMPUTE = {"policy": [{"type": "reuse", "interval": 1, "sites": {"kinds": ["attn", "mlp", "block"]}}]}
ADAPTERS = {"allegro": "allegro", "mochi": "mochi", "ltx": "ltx", "hunyuan_video": "hunyuan_video",
            "hunyuan_video15": "hunyuan_video15", "cogvideox15": "cogvideox", "wan22": "wan", "skyreels_v2": "wan", "chronoedit": "wan",
            "wan_vace": "wan"}


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


class PipelineRun:
    """Runs the family's pipeline; cachekit is enabled on the pipeline."""

    def __init__(self, family):
        self.family, self.pipe = family, BUILDERS[family]()
        self.target = self.pipe

    def enable(self, config):
        return cachekit.enable(self.pipe, config)

    def __call__(self):
        return [quiet(self.pipe, **model_call(self.family, self.pipe, STEPS)).frames]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def first_blocks(session):
    """The first block of every hooked expert (the module holding the sites of block 0)."""
    site = next(s for s in session.adapter.sites() if s.block == 0)
    parts = site.module_path.split(".")
    path = ".".join(parts[: parts.index("0") + 1])
    return session.adapter.modules(Site("first block", "block", path, 0, "denoiser"))


class Rows:
    """Counts the samples (batch rows) that enter the given modules' real forwards."""

    def __init__(self, modules):
        self.rows = 0
        self.handles = [m.register_forward_pre_hook(self.hook, with_kwargs=True) for m in modules]

    def hook(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self.rows += hidden.shape[0]

    def remove(self):
        for handle in self.handles:
            handle.remove()


def check_plan_executed(session):
    report = session.report()
    assert report.executed == {node: a.kind for node, a in session.plan.nodes() if a.kind != "skip"}
    return report


@pytest.mark.parametrize("family", list(BUILDERS))
def test_fastercache_preset(family):
    run = PipelineRun(family)
    reference = run()

    session = run.enable(ALL_COMPUTE)
    assert session.adapter.name == ADAPTERS[family]
    assert same(run(), reference)
    cachekit.disable(run.target)

    session = run.enable("fastercache")
    run()  # profiles
    rows = Rows(first_blocks(session))
    out = run()
    rows.remove()
    report = check_plan_executed(session)
    assert all(torch.isfinite(o).all() for o in out)
    assert report.counts()["reconstruct"] > 0
    rebuilt = {(s, site, b) for (s, site, b), k in report.executed.items() if k == "reconstruct"}
    assert any(site.endswith("attn.joint") for _, site, _ in rebuilt)
    skipped_uncond = [s for s, site, b in rebuilt if site == "denoiser" and b == "uncond"]
    assert skipped_uncond, "CFG-Cache planned no uncond skip"
    computed = sum(1 for (_, site, _), a in session.plan.nodes() if site == "denoiser" and a.kind == "compute")
    assert rows.rows == computed == 2 * STEPS - len(skipped_uncond)
    assert not same(out, reference)
    cachekit.disable(run.target)
    assert same(run(), reference)


@pytest.mark.parametrize("family", list(BUILDERS))
def test_every_site_kind_reused(family):
    """Whole blocks (residual, tuple outputs included), then attentions and MLPs, reused every other
    step: every kind the adapter declares is reused, and the output stays finite."""
    run = PipelineRun(family)
    window = {"start": 4, "end": STEPS, "unit": "step"}
    kinds = set()
    for selected in (["block"], ["attn", "mlp"]):
        session = run.enable({"policy": [{"type": "reuse", "interval": 2, "window": window, "sites": {"kinds": selected}}]})
        out = run()
        report = check_plan_executed(session)
        assert all(torch.isfinite(o).all() for o in out)
        kinds |= {next(s.kind for s in session.adapter.sites() if s.name == site)
                  for (_, site, _), k in report.executed.items() if k == "reuse"}
        cachekit.disable(run.target)
    assert kinds == {s.kind for s in session.adapter.sites()} - {"denoiser"}


def test_wan22_hooks_both_experts_one_run():
    """The two experts share one plan: the high-noise expert answers the first steps, the low-noise
    one the rest, and the run clock counts both as one run."""
    run = PipelineRun("wan22")
    pipe = run.pipe
    session = run.enable("fastercache")
    run()  # profiles
    seen = {id(pipe.transformer): 0, id(pipe.transformer_2): 0}
    handles = [m.patch_embedding.register_forward_pre_hook(lambda mod, a, key=id(m): seen.__setitem__(key, seen[key] + 1))
               for m in (pipe.transformer, pipe.transformer_2)]
    run()
    for handle in handles:
        handle.remove()
    report = check_plan_executed(session)
    assert report.branches == ("uncond", "cond") and session.plan.num_steps == STEPS
    assert seen[id(pipe.transformer)] > 0 and seen[id(pipe.transformer_2)] > 0
    computed = sum(1 for (_, site, _), a in session.plan.nodes() if site == "denoiser" and a.kind == "compute")
    assert sum(seen.values()) == computed
    cachekit.disable(pipe)
    assert not hasattr(pipe.transformer_2.blocks[0], "_diffusers_hook")


def test_hunyuan_video_guidance_distilled_says_cfg_has_nothing_to_do():
    """Without true CFG HunyuanVideo calls its transformer once per step (guidance is an input of
    the model): the run has no uncond branch, CFG-Cache says why it did nothing, attention reuse
    still runs."""
    run = PipelineRun("hunyuan_video")
    session = run.enable("fastercache")
    with pytest.warns(UserWarning) as caught:
        out = run.pipe(**model_call("hunyuan_video", run.pipe, STEPS, guidance_scale=1.0)).frames
    messages = [str(w.message) for w in caught]
    assert any("guidance-distilled" in m and "CFG policies have nothing to do" in m for m in messages)
    assert any("policy 'cfg_cache' made no decision" in m and "no uncond branch" in m for m in messages)
    report = check_plan_executed(session)
    assert report.branches == ("cond",) and torch.isfinite(out).all()
    assert report.counts()["reconstruct"] > 0 and not any(site == "denoiser" and k != "compute"
                                                          for (_, site, _), k in report.executed.items())
    cachekit.disable(run.pipe)
