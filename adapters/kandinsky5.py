"""Kandinsky 5 video (diffusers ``Kandinsky5Transformer3DModel`` / ``Kandinsky5T2VPipeline``): split
CFG, cond call first, no ``cache_context``.

The model first runs ``text_transformer_blocks`` over the text alone, then
``visual_transformer_blocks``: each a self-attention over all video tokens (``self_attention``;
sparse in some configurations), a cross-attention to the text (``cross_attention``) and a
feed-forward (``feed_forward``), returning one tensor. The latents are channels-last,
``(B, F, H, W, C)``.
"""

from __future__ import annotations

from cachekit.adapter import Adapter
from cachekit.registry import hookimpl
from cachekit.sites import Site


class Kandinsky5Adapter(Adapter):
    """Sites per visual block i: the block (``visual_transformer_blocks.i``, residual), its
    self-attention, cross-attention and feed-forward. The text blocks are not sites (they run on the
    text tokens only). Output ``(B, F, H, W, C)``."""

    name = "kandinsky5"
    model_classes = ("Kandinsky5Transformer3DModel",)
    cfg_layout = "split"
    call_order = ("cond", "uncond")

    def sites(self) -> list[Site]:
        sites = [Site("denoiser", "denoiser", "", layout="BFHWC")]
        for i in range(len(self.model.visual_transformer_blocks)):
            block, path = f"blocks.{i}", f"visual_transformer_blocks.{i}"
            sites += [
                Site(block, "block", path, i, "denoiser", residual=True),
                Site(f"{block}.attn.joint", "attn.joint", f"{path}.self_attention", i, block),
                Site(f"{block}.attn.cross", "attn.cross", f"{path}.cross_attention", i, block),
                Site(f"{block}.mlp", "mlp", f"{path}.feed_forward", i, block),
            ]
        return sites


@hookimpl
def cachekit_adapters() -> list[type]:
    return [Kandinsky5Adapter]
