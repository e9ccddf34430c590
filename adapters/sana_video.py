"""Sana-Video (diffusers ``SanaVideoTransformer3DModel`` / ``SanaVideoPipeline``): batched CFG
[uncond, cond], no ``cache_context``.

Each ``SanaVideoTransformerBlock`` runs a linear self-attention over all video tokens (``attn1``,
with 3-D RoPE), a cross-attention to the text (``attn2``) and a GLU feed-forward with a temporal
convolution (``ff``), and returns one tensor.
"""

from __future__ import annotations

from cachekit.adapter import Adapter
from cachekit.registry import hookimpl
from cachekit.sites import Site


class SanaVideoAdapter(Adapter):
    """Sites per block i: the block (``transformer_blocks.i``, residual), its self-attention
    (``.attn1``), cross-attention (``.attn2``) and feed-forward (``.ff``). Output ``(B, C, F, H, W)``."""

    name = "sana_video"
    model_classes = ("SanaVideoTransformer3DModel",)
    cfg_layout = "batched"
    call_order = ("uncond", "cond")

    def sites(self) -> list[Site]:
        sites = [Site("denoiser", "denoiser", "", layout="BCFHW")]
        for i, module in enumerate(self.model.transformer_blocks):
            block, path = f"blocks.{i}", f"transformer_blocks.{i}"
            sites += [
                Site(block, "block", path, i, "denoiser", residual=True),
                Site(f"{block}.attn.joint", "attn.joint", f"{path}.attn1", i, block),
                Site(f"{block}.mlp", "mlp", f"{path}.ff", i, block),
            ]
            if module.attn2 is not None:
                sites.insert(-1, Site(f"{block}.attn.cross", "attn.cross", f"{path}.attn2", i, block))
        return sites


@hookimpl
def cachekit_adapters() -> list[type]:
    return [SanaVideoAdapter]
