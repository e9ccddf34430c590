"""Several denoising loops in one pipeline call (SkyReels-V2 diffusion forcing's long-video mode
samples the video in overlapping segments, one full loop each): each loop is its own run, planned
for its step count, with nothing cached across loops, and the session reports every loop."""

import pathlib
import subprocess
import sys

import cachekit
from cachekit.policy import COMPUTE

from .pipelines_i2v import skyreels_v2_df_call, tiny_skyreels_v2_df_pipeline

STEPS = 6


def _long_call(pipe, steps=STEPS):
    """25 frames (7 latent frames) in segments of 9 (3 latent frames) overlapping by 5: 5 loops."""
    return {**skyreels_v2_df_call(pipe, steps), "num_frames": 25, "base_num_frames": 9, "overlap_history": 5,
            "addnoise_condition": 0}


class _Forwards:
    """Counts the transformer's own forward computations (not calls cachekit answered from its cache)."""

    def __init__(self, model):
        self.count, self.model = 0, model
        for block in model.blocks[:1]:
            block.register_forward_pre_hook(lambda module, args: setattr(self, "count", self.count + 1))


def test_each_loop_of_a_pipeline_call_is_its_own_run_and_reported():
    pipe = tiny_skyreels_v2_df_pipeline()
    forwards = _Forwards(pipe.transformer)
    pipe(**_long_call(pipe))
    per_loop = 2 * STEPS  # split CFG: cond and uncond
    loops = forwards.count // per_loop
    assert loops >= 2 and forwards.count == loops * per_loop

    session = cachekit.enable(pipe, "quality")
    forwards.count = 0
    pipe(**_long_call(pipe))
    reports = session.reports()
    assert len(reports) == loops and all(r.num_steps == STEPS for r in reports)
    assert reports[-1] is session.report()
    for report in reports:  # every loop starts with nothing cached: its first step computes
        assert all(kind == COMPUTE for (step, _, _), kind in report.executed.items() if step == 0)
        assert report.executed == reports[0].executed  # the same plan, executed in full, in every loop
    computed = sum(kind == COMPUTE for r in reports for kind in r.executed.values())
    assert forwards.count == computed < loops * per_loop  # each loop skipped what its plan skips

    pipe(**{**_long_call(pipe), "num_frames": 17})  # another call: its own loops only
    assert 1 <= len(session.reports()) < loops
    cachekit.disable(pipe)


def test_an_ordinary_call_has_one_report_and_a_bare_model_each_run_its_own():
    from .pipelines import tiny_wan_pipeline, wan_call

    pipe = tiny_wan_pipeline()
    session = cachekit.enable(pipe, "quality")
    pipe(**wan_call(pipe, STEPS))
    pipe(**wan_call(pipe, STEPS))
    assert session.reports() == (session.report(),)
    cachekit.disable(pipe)


#: Calls from module-level code: there the next call's frame takes the last one's address.
_MODULE_LEVEL_CALLS = """
import torch, cachekit
from tests.pipelines import model_call, tiny_easyanimate_pipeline
torch.set_num_threads(1)
pipe = tiny_easyanimate_pipeline()
session = cachekit.enable(pipe, "quality")
for _ in range(3):
    pipe(**model_call("easyanimate", pipe, 4))
    print(len(session.reports()))
"""


def test_calls_of_a_pipeline_that_resets_no_hooks_report_their_own_runs():
    """EasyAnimate's transformer has no cache_context: diffusers resets no hook when its call ends."""
    done = subprocess.run([sys.executable, "-c", _MODULE_LEVEL_CALLS], capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).parent.parent, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "1", "1"]
