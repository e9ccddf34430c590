"""The newer diffusers video families on real tiny pipelines (``tests/pipelines_new.py``), with CFG
and the ``fastercache`` preset, through ``cachekit.testing.check_adapter``."""

import pytest
import torch

import cachekit
from cachekit.testing import check_adapter
from tests.pipelines import assert_one_branch_probe
from tests.pipelines_new import BUILDERS, CALLS

torch.set_num_threads(1)

STEPS = 8
ADAPTERS = {"lucy_edit": "wan", "kandinsky6": "kandinsky6", "anyflow": "anyflow", "consisid": "consisid"}
#: The families whose pipeline batches the CFG branches along dim 0 (the rest call once per branch).
BATCHED = {"anyflow", "consisid"}
#: The families whose adapter has block sites (and so a block stack).
BLOCKS = {"lucy_edit", "anyflow", "consisid"}
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


def test_kandinsky6_has_no_block_sites_and_caches_the_video_path():
    """Kandinsky 6's fused blocks return ``(video, None)`` on a video-only call, so the adapter's
    sites are the video path's attentions and feed-forward, children of the denoiser; the preset's
    attention reuse and CFG-Cache run on them and the output stays finite."""
    pipe = BUILDERS["kandinsky6"]()
    session = cachekit.enable(pipe, "fastercache")
    kinds = {site.kind for site in session.adapter.sites()}
    assert kinds == {"denoiser", "attn.joint", "attn.cross", "mlp"}
    out = pipe(**CALLS["kandinsky6"](pipe, STEPS)).frames
    counts = session.report().counts()
    cachekit.disable(pipe)
    assert torch.isfinite(out).all() and counts.get("reconstruct", 0) > 0
