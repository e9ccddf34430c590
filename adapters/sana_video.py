"""Sana-Video (diffusers ``SanaVideoTransformer3DModel`` / ``SanaVideoPipeline``): batched CFG
[uncond, cond], no ``cache_context``.

Each ``SanaVideoTransformerBlock`` runs a linear self-attention over all video tokens (``attn1``,
with 3-D RoPE), a cross-attention to the text (``attn2``) and a GLU feed-forward with a temporal
convolution (``ff``), and returns one tensor.

Sana-WM (``SanaWMTransformer3DModel`` / ``SanaWMPipeline``, camera-controlled image-to-video) batches
the CFG branches the same way, with a timestep per latent frame ``(B, 1, F)`` (0 on the conditioning
first frame) and per-sample camera inputs (a ray map per latent frame, Plucker embeddings). Each
``SanaVideoMSCamCtrlBlock`` runs a camera-conditioned self-attention over all video tokens
(``attn``: linear gated-delta attention, softmax attention every few blocks), a cross-attention to the
text (``cross_attn``) and a GLU feed-forward with a temporal convolution (``mlp``), and returns one
tensor.

SANA-WM's stage 2 (``SanaWMLTX2RefinerTransformer3DModel`` / ``SanaWMLTX2Refiner``) is an LTX-2 video
transformer refining the stage-1 latents chunk by chunk over a sliding key/value cache: one
denoising loop per chunk, one call per step (``kv_cache_mode="inject"``), no CFG. Between loops the
pipeline calls the model to capture keys and values into the cache (``"capture_pre_rope"`` once for
the attention sink, ``"inject_and_capture_post_rope"`` after each chunk): no steps.
"""

from __future__ import annotations

from typing import Any

from cachekit.adapter import SELF_CROSS_FF, BlockListAdapter
from cachekit.registry import hookimpl

#: The refiner's ``kv_cache_mode`` values of the calls that fill its key/value cache.
_CAPTURE_MODES = ("capture_pre_rope", "inject_and_capture_post_rope")


class SanaVideoAdapter(BlockListAdapter):
    """Sites per block i: the block (``transformer_blocks.i``, residual), its self-attention
    (``.attn1``), cross-attention (``.attn2``) and feed-forward (``.ff``). Output ``(B, C, F, H, W)``."""

    name = "sana_video"
    model_classes = ("SanaVideoTransformer3DModel",)
    cfg_layout = "batched"
    call_order = ("uncond", "cond")
    block_children = SELF_CROSS_FF


class SanaWMAdapter(BlockListAdapter):
    """Sites per block i: the block (``blocks.i``, residual), its camera-conditioned self-attention
    (``.attn``), cross-attention (``.cross_attn``) and feed-forward (``.mlp``). Output ``(B, C, F, H, W)``."""

    name = "sana_wm"
    model_classes = ("SanaWMTransformer3DModel",)
    cfg_layout = "batched"
    call_order = ("uncond", "cond")
    block_list = "blocks"
    block_children = (("attn.joint", "attn.joint", "attn"), ("attn.cross", "attn.cross", "cross_attn"),
                      ("mlp", "mlp", "mlp"))


class SanaWMRefinerAdapter(BlockListAdapter):
    """Sites per block i: the block (``transformer_blocks.i``, residual), its self-attention over the
    sink, history and chunk keys/values (``.attn1``, attn.joint), text cross-attention (``.attn2``,
    attn.cross) and feed-forward (``.ff``, mlp); the LTX-2 audio modules are never called. Output:
    the chunk's tokens ``(B, F*H*W, C)``, whose grid the call does not pass (layout None)."""

    name = "sana_wm_refiner"
    model_classes = ("SanaWMLTX2RefinerTransformer3DModel",)
    output_layout = None  # type: ignore[assignment]
    block_children = SELF_CROSS_FF

    def cfg_active(self, pipe: Any) -> bool:
        """Never: the refiner has no guidance."""
        return False

    def is_step_call(self, args: tuple, kwargs: dict[str, Any]) -> bool:
        """Not a call that captures keys and values into the cache."""
        return kwargs.get("kv_cache_mode", args[6] if len(args) > 6 else None) not in _CAPTURE_MODES


@hookimpl
def cachekit_adapters() -> list[type]:
    return [SanaVideoAdapter, SanaWMAdapter, SanaWMRefinerAdapter]
