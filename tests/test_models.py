"""Every model adapter on a real tiny diffusers pipeline of its family, with CFG and the
``fastercache`` preset: executed decisions equal the plan, outputs are finite, an all-compute plan
is bitwise equal to uncached, ``disable()`` restores bitwise, and the uncond branch really skips
the blocks where CFG-Cache plans it (counted as the samples entering the first block)."""

import warnings

import pytest
import torch

import cachekit
from cachekit.sites import Site
from tests.pipelines import BUILDERS, model_call

torch.set_num_threads(1)

STEPS = 12
ALL_COMPUTE = {"policy": [{"type": "reuse", "interval": 1, "sites": {"kinds": ["attn", "mlp", "block"]}}]}
#: Pipelines that pass ``sigmas=`` to ``scheduler.set_timesteps``: replayed on the bare transformer.
SIGMAS = ("mochi", "ltx", "hunyuan_video", "hunyuan_video15")
ADAPTERS = {"allegro": "allegro", "mochi": "mochi", "ltx": "ltx", "hunyuan_video": "hunyuan_video",
            "cogvideox15": "cogvideox", "wan22": "wan", "skyreels_v2": "wan", "wan_vace": "wan",
            "hunyuan_video15": "hunyuan_video15"}


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


def first_blocks(session):
    """The first block of every hooked expert (the module holding the sites of block 0)."""
    site = next(s for s in session.sites if s.block == 0)
    parts = site.module_path.split(".")
    path = ".".join(parts[: parts.index("0") + 1])
    return session.adapter.modules(Site("first block", "block", path, 0))


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


def computed_denoiser_rows(session):
    return sum(1 for (_, site, _), a in session.plan.nodes() if site == "denoiser" and a.kind == "compute")


def check_plan_executed(session):
    report = session.report()
    assert report.executed == {node: a.kind for node, a in session.plan.nodes() if a.kind != "skip"}
    return report


# -- pipelines that run under cachekit end to end ----------------------------------------------

PIPELINE_FAMILIES = [f for f in BUILDERS if f not in SIGMAS]


@pytest.mark.parametrize("family", PIPELINE_FAMILIES)
def test_pipeline_fastercache(family):
    pipe = BUILDERS[family]()
    call = lambda: quiet(pipe, **model_call(family, pipe, STEPS)).frames  # noqa: E731
    reference = call()

    session = cachekit.enable(pipe, ALL_COMPUTE)
    assert session.adapter.name == ADAPTERS[family]
    assert torch.equal(call(), reference)
    cachekit.disable(pipe)

    session = cachekit.enable(pipe, "fastercache")
    call()  # profiles
    rows = Rows(first_blocks(session))
    out = call()
    rows.remove()
    report = check_plan_executed(session)
    assert torch.isfinite(out).all()
    counts = report.counts()
    assert counts["reconstruct"] > 0
    skipped_uncond = [s for (s, site, b), k in report.executed.items() if site == "denoiser" and b == "uncond" and k != "compute"]
    assert skipped_uncond, "CFG-Cache planned no uncond skip"
    assert rows.rows == computed_denoiser_rows(session) == 2 * STEPS - len(skipped_uncond)
    assert not torch.equal(out, reference)
    cachekit.disable(pipe)
    assert torch.equal(call(), reference)


def test_wan22_hooks_both_experts_one_run():
    """The two experts share one plan: the high-noise expert answers the first steps, the low-noise
    one the rest, and the run clock counts both as one run."""
    pipe = BUILDERS["wan22"]()
    session = cachekit.enable(pipe, "fastercache")
    quiet(pipe, **model_call("wan22", pipe, STEPS))  # profiles
    seen = {id(pipe.transformer): 0, id(pipe.transformer_2): 0}
    handles = [m.patch_embedding.register_forward_pre_hook(lambda mod, a, key=id(m): seen.__setitem__(key, seen[key] + 1))
               for m in (pipe.transformer, pipe.transformer_2)]
    quiet(pipe, **model_call("wan22", pipe, STEPS))
    for handle in handles:
        handle.remove()
    report = check_plan_executed(session)
    assert report.branches == ("uncond", "cond") and session.plan.num_steps == STEPS
    assert seen[id(pipe.transformer)] > 0 and seen[id(pipe.transformer_2)] > 0
    assert sum(seen.values()) == computed_denoiser_rows(session)
    steps_rebuilt = {s for (s, site, _), k in report.executed.items() if site.endswith("attn.joint") and k == "reconstruct"}
    assert steps_rebuilt
    cachekit.disable(pipe)
    assert not hasattr(pipe.transformer_2.blocks[0], "_diffusers_hook")


# -- pipelines that pass sigmas: their real calls, replayed on the bare transformer ---------------

def record_calls(pipe, call):
    """(args, kwargs) of every transformer call of one uncached pipeline run, and its outputs."""
    calls = []

    def hook(module, args, kwargs):
        calls.append((args, dict(kwargs)))

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    quiet(pipe, **call)
    handle.remove()
    return calls


def replay(model, calls):
    with torch.no_grad():
        return [model(*args, **kwargs)[0] for args, kwargs in calls]


@pytest.mark.parametrize("family", SIGMAS)
def test_bare_transformer_fastercache(family):
    pipe = BUILDERS[family]()
    calls = record_calls(pipe, model_call(family, pipe, STEPS))
    model = pipe.transformer
    assert len(calls) == STEPS * (2 if family.startswith("hunyuan_video") else 1)
    reference = replay(model, calls)

    session = cachekit.enable(model, ALL_COMPUTE, num_inference_steps=STEPS, cfg=True)
    assert session.adapter.name == ADAPTERS[family]
    assert all(torch.equal(a, b) for a, b in zip(quiet(replay, model, calls), reference))
    cachekit.disable(model)

    session = cachekit.enable(model, "fastercache", num_inference_steps=STEPS, cfg=True)
    quiet(replay, model, calls)  # profiles
    rows = Rows(first_blocks(session))
    outs = quiet(replay, model, calls)
    rows.remove()
    report = check_plan_executed(session)
    assert all(torch.isfinite(o).all() for o in outs)
    assert report.counts()["reconstruct"] > 0
    skipped_uncond = [s for (s, site, b), k in report.executed.items() if site == "denoiser" and b == "uncond" and k != "compute"]
    assert skipped_uncond
    assert rows.rows == computed_denoiser_rows(session) == 2 * STEPS - len(skipped_uncond)
    cachekit.disable(model)
    assert all(torch.equal(a, b) for a, b in zip(replay(model, calls), reference))
