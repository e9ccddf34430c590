"""Wan Animate 2 on the real ``WanAnimate2ModularPipeline`` built from tiny random parts, and its
transformer in a hand-written segment loop (``tests/pipelines_wan_animate2.py``): lists of
per-item tensors in and out, and a key/value extract call before each segment's loop that is no
denoising step."""

import warnings

import pytest
import torch

import cachekit
from cachekit.policy import COMPUTE
from cachekit.adapters.wan import WanAnimate2Adapter
from cachekit.testing import check_adapter
from tests.pipelines_wan_animate2 import (tiny_wan_animate2_pipeline, tiny_wan_animate2_transformer,
                                          wan_animate2_call, wan_animate2_loop)

torch.set_num_threads(1)

pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")


def test_check_adapter_fastercache_on_the_modular_pipeline():
    """The guider's split CFG (cond first): all-compute bitwise, executed = plan, the first block
    entered once per planned branch (the extract call computing plainly besides), CFG-Cache
    rebuilding uncond from the per-item prediction ``(C, F, H, W)``, the call order, ``disable()``
    bitwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = check_adapter(tiny_wan_animate2_pipeline, wan_animate2_call, steps=6)
    assert result.adapter == "wan_animate2" and result.branches == ("uncond", "cond")
    assert result.first_block_measured == result.first_block_planned < result.first_block_uncached
    assert {"denoiser", "attn.joint", "attn.cross", "mlp", "block", "stack"} <= set(result.cached_nodes)
    assert "call order: the cond branch steers the run" in result.checked


def test_the_extract_call_is_no_step_of_the_hand_written_loop():
    """A bare transformer enabled for 10 steps with CFG: the loop's extract call (timestep of the
    first step) computes plainly, so the run is exactly the 10 steps of cond and uncond calls, each
    placed on its step; the preset rebuilds uncond; ``disable()`` restores bitwise."""
    model = tiny_wan_animate2_transformer()
    calls = []
    model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs["kv_cache_mode"]),
                                    with_kwargs=True)
    reference = wan_animate2_loop(model, 10)
    assert calls == ["extract"] + ["cached"] * 20
    session = cachekit.enable(model, "fastercache", num_inference_steps=10, cfg=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = wan_animate2_loop(model, 10)
    assert not [w for w in caught if str(w.message).startswith("cachekit")]
    report = session.report()
    cachekit.disable(model)
    assert report.num_steps == 10 and report.branches == ("uncond", "cond")
    assert all(kind == COMPUTE for (step, _, _), kind in report.executed.items() if step == 0)
    assert any(kind != COMPUTE for (_, site, branch), kind in report.executed.items()
               if (site, branch) == ("denoiser", "uncond"))
    assert torch.isfinite(out).all() and not torch.equal(out, reference)
    assert torch.equal(wan_animate2_loop(model, 10), reference)


class _EveryCallAStep(WanAnimate2Adapter):
    def is_step_call(self, args, kwargs):
        return True


def test_without_is_step_call_the_extract_call_throws_the_run_off():
    """Taken for a step, the extract call (over the driving video's 2 latent frames) starts the run,
    and the first real step's 3-frame input switches caching off for the whole run, which cachekit
    says."""
    model = tiny_wan_animate2_transformer()
    cachekit.enable(model, "fastercache", num_inference_steps=10, cfg=True, adapter=_EveryCallAStep)
    with pytest.warns(UserWarning, match=r"cachekit: input shape changed mid-run from \(4, 2, 4, 4\) to \(4, 3, 4, 4\)"):
        wan_animate2_loop(model, 10)
    cachekit.disable(model)


def test_check_adapter_quality_on_the_distilled_pipeline():
    """``WanAnimate2DistilledModularPipeline``: the same model, its guider at 1, so one branch a run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = check_adapter(lambda: tiny_wan_animate2_pipeline(distilled=True),
                               lambda pipe, steps: wan_animate2_call(pipe, steps, guidance_scale=1.0), steps=6,
                               config="quality")
    assert result.adapter == "wan_animate2" and result.branches == ("cond",)
    assert result.first_block_measured == result.first_block_planned < result.first_block_uncached
