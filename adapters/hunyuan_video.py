"""HunyuanVideo (diffusers ``HunyuanVideoTransformer3DModel`` / ``HunyuanVideoPipeline``) and
HunyuanVideo 1.5 (``HunyuanVideo15Transformer3DModel`` / ``HunyuanVideo15Pipeline``) and
HunyuanVideo FramePack (``HunyuanVideoFramepackTransformer3DModel`` /
``HunyuanVideoFramepackPipeline``).

The model runs ``transformer_blocks`` (dual-stream: video and text tokens keep their own
modulation, feed-forward ``ff`` / ``ff_context`` and meet in one joint attention ``attn``), then
``single_transformer_blocks`` (one stream over the concatenated tokens: joint attention ``attn`` in
parallel with an MLP whose input projection is ``proj_mlp``). Every block and attention returns the
tuple ``(hidden_states, encoder_hidden_states)``.

CFG: the pipeline is guidance-distilled (``guidance_scale`` is an input of the model, one call per
step) unless ``true_cfg_scale > 1`` and negative prompt embeddings are given; then it calls the
transformer twice per step, ``cache_context("cond")`` first, ``cache_context("uncond")`` second.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from cachekit.adapter import Adapter
from cachekit.registry import hookimpl
from cachekit.sites import Site


class HunyuanVideoAdapter(Adapter):
    """Sites: dual-stream block i (``blocks.i``: ``transformer_blocks.i``, residual) with its joint
    attention (``.attn``), video and text feed-forwards (``.ff``, ``.ff_context``); single-stream
    block j (``single_blocks.j``: ``single_transformer_blocks.j``, residual, block index L + j) with
    its joint attention and MLP input projection (``.proj_mlp``). Output ``(B, C, F, H, W)``."""

    name = "hunyuan_video"
    model_classes = ("HunyuanVideoTransformer3DModel",)
    cfg_layout = "split"
    call_order = ("cond", "uncond")

    def sites(self) -> list[Site]:
        dual = len(self.model.transformer_blocks)
        sites = [Site("denoiser", "denoiser", "", layout="BCFHW"), *_dual_stream_sites(dual)]
        for j in range(len(self.model.single_transformer_blocks)):
            block, path, index = f"single_blocks.{j}", f"single_transformer_blocks.{j}", dual + j
            sites += [
                Site(block, "block", path, index, "denoiser", residual=True),
                Site(f"{block}.attn.joint", "attn.joint", f"{path}.attn", index, block),
                Site(f"{block}.mlp", "mlp", f"{path}.proj_mlp", index, block),
            ]
        return sites

    def cfg_active(self, pipe: Any) -> bool:
        """True CFG is decided inside ``__call__`` (``do_true_cfg``), read from its frame while it
        sets the timesteps; a guidance-distilled run says that CFG policies have nothing to do."""
        frame = sys._getframe(1)
        while frame is not None and not (frame.f_locals.get("self") is pipe and "do_true_cfg" in frame.f_locals):
            frame = frame.f_back
        if frame is not None and frame.f_locals["do_true_cfg"]:
            return True
        warnings.warn(f"cachekit: {type(pipe).__name__} runs guidance-distilled (true_cfg_scale <= 1 or no negative "
                      "prompt): one transformer call per step and no uncond branch, so CFG policies have nothing to do",
                      stacklevel=2)
        return False


def _dual_stream_sites(blocks: int) -> list[Site]:
    """Dual-stream block i: the block (residual), its joint attention and both feed-forwards."""
    sites = []
    for i in range(blocks):
        block, path = f"blocks.{i}", f"transformer_blocks.{i}"
        sites += [
            Site(block, "block", path, i, "denoiser", residual=True),
            Site(f"{block}.attn.joint", "attn.joint", f"{path}.attn", i, block),
            Site(f"{block}.mlp", "mlp", f"{path}.ff", i, block),
            Site(f"{block}.mlp.context", "mlp", f"{path}.ff_context", i, block),
        ]
    return sites


class HunyuanVideo15Adapter(Adapter):
    """HunyuanVideo 1.5: dual-stream blocks only (``transformer_blocks.i``, sites as HunyuanVideo's
    dual-stream ones). The pipeline's CFG runs through its guider (``ClassifierFreeGuidance``): one
    call per condition, cond first, each in ``cache_context`` of the guider's name. Output
    ``(B, C, F, H, W)``."""

    name = "hunyuan_video15"
    model_classes = ("HunyuanVideo15Transformer3DModel",)
    cfg_layout = "split"
    call_order = ("cond", "uncond")

    def sites(self) -> list[Site]:
        return [Site("denoiser", "denoiser", "", layout="BCFHW"), *_dual_stream_sites(len(self.model.transformer_blocks))]

    def cfg_active(self, pipe: Any) -> bool:
        """Whether the pipeline's guider runs an unconditional prediction (``num_conditions > 1``)."""
        return pipe.guider.num_conditions > 1


class HunyuanVideoFramepackAdapter(HunyuanVideoAdapter):
    """HunyuanVideo FramePack: HunyuanVideo's dual- and single-stream blocks (the same block
    classes, called the same way; sites as HunyuanVideo's) over the section's latent tokens preceded
    by the packed history tokens (clean, 2x and 4x); the output is the section's latents only,
    ``(B, C, F, H, W)``. The model class is not a ``HunyuanVideoTransformer3DModel``, hence its own
    adapter.

    The pipeline samples the video in sections, one full denoising loop each (it sets its
    timesteps again per section): each loop is a run of its own. CFG: guidance-distilled (one call
    per step) unless ``true_cfg_scale > 1`` and negative prompt embeddings are given; then two calls
    per step, cond first, uncond second, without ``cache_context`` (so ``call_order`` tells them)."""

    name = "hunyuan_video_framepack"
    model_classes = ("HunyuanVideoFramepackTransformer3DModel",)


@hookimpl
def cachekit_adapters() -> list[type]:
    return [HunyuanVideoAdapter, HunyuanVideo15Adapter, HunyuanVideoFramepackAdapter]
