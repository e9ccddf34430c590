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
"""

from __future__ import annotations

from cachekit.adapter import SELF_CROSS_FF, BlockListAdapter
from cachekit.registry import hookimpl


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


@hookimpl
def cachekit_adapters() -> list[type]:
    return [SanaVideoAdapter, SanaWMAdapter]
