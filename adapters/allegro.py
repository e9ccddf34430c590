"""Allegro (diffusers ``AllegroTransformer3DModel`` / ``AllegroPipeline``): batched CFG [uncond, cond].

Each ``AllegroTransformerBlock`` runs a full 3-D self-attention over the video tokens (``attn1``,
3-D RoPE), a cross-attention to the text (``attn2``) and a feed-forward (``ff``), and returns one
tensor. The pipeline never enters ``cache_context``.
"""

from __future__ import annotations

from cachekit.adapter import Adapter
from cachekit.registry import hookimpl
from cachekit.sites import Site


class AllegroAdapter(Adapter):
    """Sites per block i: the block (``transformer_blocks.i``, residual), its self-attention
    (``.attn1``), cross-attention (``.attn2``) and feed-forward (``.ff``). Output ``(B, C, F, H, W)``."""

    name = "allegro"
    model_classes = ("AllegroTransformer3DModel",)
    cfg_layout = "batched"
    call_order = ("uncond", "cond")

    def sites(self) -> list[Site]:
        sites = [Site("denoiser", "denoiser", "", layout="BCFHW")]
        for i in range(len(self.model.transformer_blocks)):
            block, path = f"blocks.{i}", f"transformer_blocks.{i}"
            sites += [
                Site(block, "block", path, i, "denoiser", residual=True),
                Site(f"{block}.attn.joint", "attn.joint", f"{path}.attn1", i, block),
                Site(f"{block}.attn.cross", "attn.cross", f"{path}.attn2", i, block),
                Site(f"{block}.mlp", "mlp", f"{path}.ff", i, block),
            ]
        return sites


@hookimpl
def cachekit_adapters() -> list[type]:
    return [AllegroAdapter]
