"""Mochi (diffusers ``MochiTransformer3DModel`` / ``MochiPipeline``): batched CFG [uncond, cond].

Each ``MochiTransformerBlock`` runs one joint attention over video and text tokens (``attn1``,
returning ``(hidden_states, encoder_hidden_states)``) and separate feed-forwards for the video
(``ff``) and text (``ff_context``; absent in the last block, which keeps no text stream). A block
returns ``(hidden_states, encoder_hidden_states)``. The pipeline passes the timestep inverted
(0 at pure noise); plans are in step units, so nothing here depends on it.
"""

from __future__ import annotations

from cachekit.adapter import Adapter
from cachekit.registry import hookimpl
from cachekit.sites import Site


class MochiAdapter(Adapter):
    """Sites per block i: the block (``transformer_blocks.i``, residual), its joint attention
    (``.attn1``) and feed-forwards (``.ff``; ``.ff_context`` where present). Output ``(B, C, F, H, W)``."""

    name = "mochi"
    model_classes = ("MochiTransformer3DModel",)
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
            if module.ff_context is not None:
                sites.append(Site(f"{block}.mlp.context", "mlp", f"{path}.ff_context", i, block))
        return sites


@hookimpl
def cachekit_adapters() -> list[type]:
    return [MochiAdapter]
