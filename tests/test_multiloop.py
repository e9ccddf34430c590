"""Pipelines that sample in several denoising loops per call, on the real diffusers pipelines built
from tiny random components: HunyuanVideo FramePack (one loop per section, over history latents)
and Helios (one loop per chunk, and in the pyramid pipeline per stage of each chunk). Each loop is
a run of its own, planned for its step count with nothing cached across loops, and the session
reports every loop of the latest call."""

import warnings

import pytest
import torch

import cachekit
from cachekit.adapter import adapter_for
from cachekit.policy import COMPUTE, ONLINE, SKIP
from cachekit.testing import check_adapter

from .pipelines_multiloop import (PYRAMID_STEPS, framepack_call, helios_call, helios_pyramid_call,
                                  tiny_framepack_pipeline, tiny_helios_pipeline, tiny_helios_pyramid_pipeline)

STEPS = 6


def _first_block(pipe):
    model = pipe.transformer
    return model.transformer_blocks[0] if hasattr(model, "transformer_blocks") else model.blocks[0]


def _latents(output):
    """FramePack returns, for latent output, a list of the history latents after each section."""
    frames = output.frames
    return frames[-1] if isinstance(frames, list) else frames


class _Loops:
    """Watches the first block's forward computations (not calls cachekit answered from its cache):
    which schedule tensor the pipeline had set at each, so consecutive calls under one schedule
    are one loop (the tensors are held, so no identity is reused)."""

    def __init__(self, pipe):
        self.pipe, self.schedules = pipe, []
        _first_block(pipe).register_forward_pre_hook(lambda module, args: self.schedules.append(pipe.scheduler.timesteps))

    def loops(self):
        """(timesteps, calls) of each loop, in order."""
        loops = []
        for schedule in self.schedules:
            if loops and loops[-1][0] is schedule:
                loops[-1][1] += 1
            else:
                loops.append([schedule, 1])
        return [(schedule, calls) for schedule, calls in loops]



PIPELINES = {
    "framepack": (tiny_framepack_pipeline, lambda pipe: framepack_call(pipe, STEPS), [STEPS] * 2),
    "framepack-vanilla": (tiny_framepack_pipeline, lambda pipe: framepack_call(pipe, STEPS, sampling_type="vanilla"),
                          [STEPS] * 2),
    "helios": (tiny_helios_pipeline, lambda pipe: helios_call(pipe, STEPS), [STEPS] * 2),
    "helios-pyramid": (tiny_helios_pyramid_pipeline, helios_pyramid_call, PYRAMID_STEPS * 2),
}


@pytest.mark.parametrize("preset", ["quality", "fastercache"])
@pytest.mark.parametrize("family", list(PIPELINES))
def test_a_call_plans_and_reports_one_run_per_loop(family, preset):
    build, call, loop_steps = PIPELINES[family]
    pipe = build()
    watch = _Loops(pipe)
    with torch.no_grad():
        reference = _latents(pipe(**call(pipe)))
    loops = watch.loops()
    # the uncached call: one loop per section / chunk / stage, each its schedule's steps, cond and uncond
    assert [len(schedule) for schedule, _ in loops] == loop_steps
    assert [calls for _, calls in loops] == [2 * steps for steps in loop_steps]

    session = cachekit.enable(pipe, preset)
    watch.schedules = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            out = _latents(pipe(**call(pipe)))
    # no notice from cachekit: the pyramid pipeline passes its float timesteps cast to int64 (1 for
    # 1.39), which the clock's end-of-run check takes for the schedule's
    assert not [w for w in caught if str(w.message).startswith("cachekit")]
    reports = session.reports()
    assert len(reports) == len(loops) and [r.num_steps for r in reports] == loop_steps
    assert reports[-1] is session.report()
    assert torch.isfinite(out).all()
    cached_loops = watch.loops()
    assert len(cached_loops) == len(loops)
    for report, (schedule, _), cached in zip(reports, loops, cached_loops, strict=True):
        assert set(report.branches) == {"cond", "uncond"}
        # every loop starts with nothing cached: its first step computes everything it calls
        assert all(kind == COMPUTE for (step, _, _), kind in report.executed.items() if step == 0)
        plan = session.plan_for(report.num_steps, [float(t) for t in schedule])
        planned = {node: action.kind for node, action in plan.nodes() if action.kind not in (SKIP, ONLINE)}
        assert {node: report.executed.get(node) for node in planned} == planned
        # the first block ran exactly where the denoiser computed
        assert sum(kind == COMPUTE for (_, site, _), kind in report.executed.items() if site == "denoiser") == cached[1]
    assert sum(calls for _, calls in cached_loops) < sum(calls for _, calls in loops)  # the presets skip something

    cachekit.disable(pipe)
    with torch.no_grad():
        restored = _latents(pipe(**call(pipe)))
    assert torch.equal(restored, reference)


@pytest.mark.parametrize("family", list(PIPELINES))
def test_every_site_hooked_and_computed_is_bitwise_and_reuse_of_each_kind_runs_as_planned(family):
    build, call, loop_steps = PIPELINES[family]
    pipe = build()
    first = []  # per step: whether the pipeline's first call of the step carries the prompt (cond first)
    kwargs = call(pipe)
    pipe.transformer.register_forward_pre_hook(
        lambda module, args, kw: first.append(torch.equal(kw["encoder_hidden_states"], kwargs["prompt_embeds"])),
        with_kwargs=True)
    with torch.no_grad():
        reference = _latents(pipe(**kwargs))
    assert first[0::2] == [True] * sum(loop_steps) and first[1::2] == [False] * sum(loop_steps)

    adapter = adapter_for(pipe.transformer, None, pipe)
    assert adapter.name == ("hunyuan_video_framepack" if family.startswith("framepack") else "helios")
    kinds = sorted({site.kind for site in adapter.validate()})
    all_compute = {"policy": [{"type": "reuse", "label": "all-compute", "interval": 1, "sites": {"kinds": kinds}}]}
    cachekit.enable(pipe, all_compute)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "made no decision other than compute"
        with torch.no_grad():
            assert torch.equal(_latents(pipe(**call(pipe))), reference)
    cachekit.disable(pipe)

    for kind in [kind for kind in kinds if kind != "denoiser"]:
        config = {"policy": [{"type": "reuse", "label": f"reuse-{kind}", "interval": 2, "sites": {"kinds": [kind]}}]}
        session = cachekit.enable(pipe, config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # short runs' idle-policy notes
            with torch.no_grad():
                out = _latents(pipe(**call(pipe)))
        assert torch.isfinite(out).all()
        reports = session.reports()
        assert [r.num_steps for r in reports] == loop_steps
        for report in reports:
            plan = session.plan_for(report.num_steps)
            planned = {node: action.kind for node, action in plan.nodes() if action.kind not in (SKIP, ONLINE)}
            assert {node: report.executed.get(node) for node in planned} == planned
            assert any(k != COMPUTE for k in report.executed.values()), kind
        cachekit.disable(pipe)
    with torch.no_grad():
        assert torch.equal(_latents(pipe(**call(pipe))), reference)


@pytest.mark.parametrize("family", ["helios", "helios_pyramid", "framepack"])
def test_check_adapter_passes_on_several_loops(family):
    """``check_adapter`` on a call of two loops (Helios' chunks, FramePack's sections, whose latent
    output is the list of history latents after each section: the last is compared) or six (the
    pyramid's 2 chunks x 3 stages): steps and calls into the first block are counted over every loop
    of the call, device reads per loop. ``HeliosPipeline`` passes ``sigmas=`` as a list to
    ``HeliosScheduler.set_timesteps``, which needs an array: that call is not probed, and said so."""
    build, call = {"helios": (tiny_helios_pipeline, helios_call),
                   "helios_pyramid": (tiny_helios_pyramid_pipeline, helios_pyramid_call),
                   "framepack": (tiny_framepack_pipeline, framepack_call)}[family]
    result = check_adapter(build, call, steps=4)
    assert result.first_block_measured == result.first_block_planned < result.first_block_uncached
    assert {"attn.joint", "block", "stack", "denoiser"} <= set(result.cached_nodes)
    refused = [note for note in result.notes if note.startswith("call with sigmas=: not probed")]
    assert bool(refused) == (family == "helios") and (not refused or "TypeError" in refused[0])


def test_framepack_guidance_distilled_runs_one_branch_per_loop():
    """Without true CFG (``true_cfg_scale=1``) FramePack calls the model once per step: each loop's run
    has the single branch cond (and cachekit says that CFG policies have nothing to do)."""
    pipe = tiny_framepack_pipeline()
    kwargs = {**framepack_call(pipe, STEPS), "true_cfg_scale": 1.0}
    with torch.no_grad():
        reference = _latents(pipe(**kwargs))
    session = cachekit.enable(pipe, "quality")
    with pytest.warns(UserWarning, match="guidance-distilled"):
        with torch.no_grad():
            out = _latents(pipe(**{**kwargs, "generator": torch.Generator().manual_seed(0)}))
    reports = session.reports()
    assert len(reports) == 2 and all(r.num_steps == STEPS and r.branches == ("cond",) for r in reports)
    assert torch.isfinite(out).all() and any(k != COMPUTE for r in reports for k in r.executed.values())
    cachekit.disable(pipe)
    with torch.no_grad():
        assert torch.equal(_latents(pipe(**{**kwargs, "generator": torch.Generator().manual_seed(0)})), reference)
