"""Kandinsky 5 video (diffusers ``Kandinsky5Transformer3DModel`` / ``Kandinsky5T2VPipeline``): split
CFG, cond call first, no ``cache_context``.

The model first runs ``text_transformer_blocks`` over the text alone, then
``visual_transformer_blocks``: each a self-attention over all video tokens (``self_attention``;
sparse in some configurations), a cross-attention to the text (``cross_attention``) and a
feed-forward (``feed_forward``), returning one tensor. The latents are channels-last,
``(B, F, H, W, C)``.
"""

from __future__ import annotations

from cachekit.adapter import BlockListAdapter
from cachekit.registry import hookimpl


class Kandinsky5Adapter(BlockListAdapter):
    """Sites per visual block i: the block (``visual_transformer_blocks.i``, residual), its
    self-attention, cross-attention and feed-forward. The text blocks are not sites (they run on the
    text tokens only). Output ``(B, F, H, W, C)``."""

    name = "kandinsky5"
    model_classes = ("Kandinsky5Transformer3DModel",)
    cfg_layout = "split"
    call_order = ("cond", "uncond")

    block_list = "visual_transformer_blocks"
    output_layout = "BFHWC"
    block_children = (
        ("attn.joint", "attn.joint", "self_attention"),
        ("attn.cross", "attn.cross", "cross_attention"),
        ("mlp", "mlp", "feed_forward"),
    )


@hookimpl
def cachekit_adapters() -> list[type]:
    return [Kandinsky5Adapter]
