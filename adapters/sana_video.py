"""Sana-Video (diffusers ``SanaVideoTransformer3DModel`` / ``SanaVideoPipeline``): batched CFG
[uncond, cond], no ``cache_context``.

Each ``SanaVideoTransformerBlock`` runs a linear self-attention over all video tokens (``attn1``,
with 3-D RoPE), a cross-attention to the text (``attn2``) and a GLU feed-forward with a temporal
convolution (``ff``), and returns one tensor.
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


@hookimpl
def cachekit_adapters() -> list[type]:
    return [SanaVideoAdapter]
