"""The newer diffusers video families on real tiny pipelines (``tests/pipelines_new.py``), with CFG
and the ``fastercache`` preset, through ``cachekit.testing.check_adapter``."""

import pytest
import torch

import cachekit
from cachekit.policy import COMPUTE
from cachekit.testing import check_adapter
from tests.pipelines import assert_one_branch_probe
from tests.pipelines_new import BUILDERS, CALLS

torch.set_num_threads(1)

STEPS = 8
ADAPTERS = {"lucy_edit": "wan", "kandinsky6": "kandinsky6", "anyflow": "anyflow", "consisid": "consisid"}
#: The families whose pipeline batches the CFG branches along dim 0 (the rest call once per branch).
BATCHED = {"anyflow", "consisid"}
#: The families whose adapter has block sites (and so a block stack).
BLOCKS = {"lucy_edit", "anyflow", "consisid", "kandinsky6"}
#: The families whose blocks have no cross-attention (text and video attend jointly).
JOINT_ONLY = {"consisid"}


@pytest.mark.parametrize("family", list(BUILDERS))
def test_check_adapter_fastercache(family):
    """All-compute bitwise equal to uncached, executed = plan and finite under the preset and under a
    reuse of every site kind, the first block entered once per planned denoiser branch (so CFG-Cache
    skips the uncond branch), the call order, ``sigmas=`` / ``timesteps=`` calls where the pipeline
    takes them, ``disable()`` bitwise; for a batched layout every site computes one branch beside a
    reused one, each way round, with the uncached call's rows."""
    if family == "consisid":  # diffusers gives a stand-in ConsisIDPipeline without OpenCV
        pytest.importorskip("cv2", reason="ConsisIDPipeline needs OpenCV (opencv-python-headless)")
    result = check_adapter(BUILDERS[family], CALLS[family], steps=STEPS)
    assert result.adapter == ADAPTERS[family] and result.branches == ("uncond", "cond")
    assert result.first_block_measured == result.first_block_planned < result.first_block_uncached
    kinds = {"denoiser", "attn.joint", "mlp"} | (set() if family in JOINT_ONLY else {"attn.cross"})
    assert kinds <= set(result.cached_nodes)
    assert ({"block", "stack"} <= set(result.cached_nodes)) == (family in BLOCKS)
    assert "call order: the cond branch steers the run" in result.checked
    assert_one_branch_probe(result, BUILDERS[family], family in BATCHED)


@pytest.mark.parametrize("config", ["first_block", "teacache", "easycache"])
def test_kandinsky6_fused_blocks_are_sites_for_step_level_policies(config):
    """Kandinsky 6's fused blocks return ``(video, None)`` on a video-only call: each is a block site
    (the ``None`` handed back as it came), the blocks form a stack, and the step-level policies
    that skip it run as planned: the stack is skipped on some steps, the output finite and changed,
    and ``disable()`` restores it bitwise."""
    pipe = BUILDERS["kandinsky6"]()
    reference = pipe(**CALLS["kandinsky6"](pipe, 12)).frames
    session = cachekit.enable(pipe, {"policy": [{"type": config, **_LOOSE[config]}]})
    sites = {site.name: site for site in session.adapter.sites()}
    assert sites["blocks.0"].module_path == "visual_transformer_blocks.0" and sites["blocks.0"].residual
    assert sites["blocks.1.attn.joint"].module_path == "visual_transformer_blocks.1.video_dec_block.self_attention"
    out = pipe(**CALLS["kandinsky6"](pipe, 12)).frames
    report = session.report()
    cachekit.disable(pipe)
    skipped = {step for (step, site, _), kind in report.executed.items() if site == "stack" and kind != COMPUTE}
    assert skipped and torch.isfinite(out).all() and not torch.equal(out, reference)
    assert torch.equal(pipe(**CALLS["kandinsky6"](pipe, 12)).frames, reference)


#: Thresholds loose enough that the tiny random model skips some steps.
_LOOSE = {"first_block": {"threshold": 0.5}, "teacache": {"rel_l1_thresh": 2.0}, "easycache": {"threshold": 0.5, "warmup": 2}}
