"""Cosmos (diffusers ``CosmosTransformer3DModel``; tested on ``Cosmos2VideoToWorldPipeline``): split
CFG, cond call first, no ``cache_context``.

Each ``CosmosTransformerBlock`` runs a self-attention over all video tokens (``attn1``), a
cross-attention to the text (``attn2``) and a feed-forward (``ff``) and returns one tensor (two, with
a projection of it, in the control-net "after_proj" configuration, which a residual block site
refuses at its first call). The timestep is given per latent frame, ``(B, 1, F, 1, 1)``.
"""

from __future__ import annotations

from cachekit.adapter import SELF_CROSS_FF, BlockListAdapter
from cachekit.registry import hookimpl


class CosmosAdapter(BlockListAdapter):
    """Sites per block i: the block (``transformer_blocks.i``, residual), its self-attention
    (``.attn1``), cross-attention (``.attn2``) and feed-forward (``.ff``). Output ``(B, C, F, H, W)``."""

    name = "cosmos"
    model_classes = ("CosmosTransformer3DModel",)
    cfg_layout = "split"
    call_order = ("cond", "uncond")
    block_children = SELF_CROSS_FF


@hookimpl
def cachekit_adapters() -> list[type]:
    return [CosmosAdapter]
