"""No host sync per denoiser call: after its first call, a static plan's run reads at most
``READS_AFTER_FIRST_CALL`` values from the device however many calls it makes, on pipelines that
pass each call a fresh timestep tensor (HunyuanVideo and Mochi in bfloat16 cast theirs; Allegro
builds one per step)."""

import warnings

import pytest
import torch

import cachekit
from cachekit.testing import READS_AFTER_FIRST_CALL, DeviceReads

from .pipelines import BUILDERS, model_call


def _bf16(value):
    return value.to(torch.bfloat16) if isinstance(value, torch.Tensor) and value.is_floating_point() else value


@pytest.mark.parametrize("family", ["hunyuan_video", "mochi", "allegro"])
@pytest.mark.parametrize("steps", [4, 8])
def test_a_static_plan_reads_nothing_per_call(family, steps):
    pipe = BUILDERS[family]()
    pipe.transformer.to(torch.bfloat16)
    kwargs = {k: _bf16(v) for k, v in model_call(family, pipe, steps).items()}
    session = cachekit.enable(pipe, "quality")
    reads = DeviceReads(pipe.transformer)
    with reads, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pipe(**kwargs)
    report = session.report()
    cachekit.disable(pipe)
    assert report.num_steps == steps and report.counts()["compute"] < len(report.executed)
    assert reads.calls > 2 and reads.count <= READS_AFTER_FIRST_CALL


@pytest.mark.parametrize("policy", [{"type": "easycache"}, {"type": "teacache", "warmup": 3}, {"type": "first_block", "warmup": 8}])
def test_a_run_too_short_for_a_policy_to_decide_observes_nothing(policy):
    """A run whose steps all fall in an online policy's warm-up or final steps plans no decision: the
    plan is static and its computes are not observed, so the run reads nothing from the device
    (observing would read a signal a call, for no decision)."""
    from .pipelines import tiny_wan_pipeline, wan_call

    pipe = tiny_wan_pipeline()
    session = cachekit.enable(pipe, {"policy": [policy]})
    reads = DeviceReads(pipe.transformer)
    with reads, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pipe(**wan_call(pipe, 4))
    report = session.report()
    cachekit.disable(pipe)
    assert session.plan.is_static and not any(action.observe for _, action in session.plan.nodes())
    assert set(report.executed.values()) == {"compute"} and reads.count <= READS_AFTER_FIRST_CALL
