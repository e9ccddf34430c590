"""Allegro (diffusers ``AllegroTransformer3DModel`` / ``AllegroPipeline``): batched CFG [uncond, cond].

Each ``AllegroTransformerBlock`` runs a full 3-D self-attention over the video tokens (``attn1``,
3-D RoPE), a cross-attention to the text (``attn2``) and a feed-forward (``ff``), and returns one
tensor. The pipeline never enters ``cache_context``.
"""

from __future__ import annotations

from cachekit.adapter import SELF_CROSS_FF, BlockListAdapter
from cachekit.registry import hookimpl


class AllegroAdapter(BlockListAdapter):
    """Sites per block i: the block (``transformer_blocks.i``, residual), its self-attention
    (``.attn1``), cross-attention (``.attn2``) and feed-forward (``.ff``). Output ``(B, C, F, H, W)``."""

    name = "allegro"
    model_classes = ("AllegroTransformer3DModel",)
    cfg_layout = "batched"
    call_order = ("uncond", "cond")
    #: The rotary tables (one row per video token, or per grid position) are shared by the CFG branches.
    shared_kwargs = ("image_rotary_emb",)
    block_children = SELF_CROSS_FF


@hookimpl
def cachekit_adapters() -> list[type]:
    return [AllegroAdapter]
