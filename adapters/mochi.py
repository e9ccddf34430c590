"""Mochi (diffusers ``MochiTransformer3DModel`` / ``MochiPipeline``): batched CFG [uncond, cond].

Each ``MochiTransformerBlock`` runs one joint attention over video and text tokens (``attn1``,
returning ``(hidden_states, encoder_hidden_states)``) and separate feed-forwards for the video
(``ff``) and text (``ff_context``; absent in the last block, which keeps no text stream). A block
returns ``(hidden_states, encoder_hidden_states)``. The pipeline passes the timestep inverted
(0 at pure noise); plans are in step units, so nothing here depends on it.
"""

from __future__ import annotations

from cachekit.adapter import BlockListAdapter
from cachekit.registry import hookimpl


class MochiAdapter(BlockListAdapter):
    """Sites per block i: the block (``transformer_blocks.i``, residual), its joint attention
    (``.attn1``) and feed-forwards (``.ff``; ``.ff_context`` where present). Output ``(B, C, F, H, W)``."""

    name = "mochi"
    model_classes = ("MochiTransformer3DModel",)
    cfg_layout = "batched"
    call_order = ("uncond", "cond")
    #: The rotary tables (one row per video token, or per grid position) are shared by the CFG branches.
    shared_kwargs = ("image_rotary_emb",)
    block_children = (
        ("attn.joint", "attn.joint", "attn1"),
        ("mlp", "mlp", "ff"),
        ("mlp.context", "mlp", "ff_context"),
    )


@hookimpl
def cachekit_adapters() -> list[type]:
    return [MochiAdapter]
