"""Latte (diffusers ``LatteTransformer3DModel`` / ``LattePipeline``): batched CFG [uncond, cond]."""

from __future__ import annotations

from typing import Any

import torch

from cachekit.adapter import Adapter
from cachekit.registry import hookimpl
from cachekit.sites import Site


class LatteAdapter(Adapter):
    """Sites per block i: the spatial block (``transformer_blocks.i``) and temporal block
    (``temporal_transformer_blocks.i``), their self-attentions, the spatial cross-attention and both
    feed-forwards."""

    name = "latte"
    model_classes = ("LatteTransformer3DModel",)
    cfg_layout = "batched"
    call_order = ("uncond", "cond")

    def sites(self) -> list[Site]:
        sites = [Site("denoiser", "denoiser", "", layout="BCFHW")]
        for i in range(len(self.model.transformer_blocks)):
            spatial, temporal = f"blocks.{i}.spatial", f"blocks.{i}.temporal"
            sites += [
                Site(spatial, "block", f"transformer_blocks.{i}", i, "denoiser", residual=True),
                Site(f"blocks.{i}.attn.spatial", "attn.spatial", f"transformer_blocks.{i}.attn1", i, spatial),
                Site(f"blocks.{i}.attn.cross", "attn.cross", f"transformer_blocks.{i}.attn2", i, spatial),
                Site(f"blocks.{i}.mlp.spatial", "mlp", f"transformer_blocks.{i}.ff", i, spatial),
                Site(temporal, "block", f"temporal_transformer_blocks.{i}", i, "denoiser", residual=True),
                Site(f"blocks.{i}.attn.temporal", "attn.temporal", f"temporal_transformer_blocks.{i}.attn1", i, temporal),
                Site(f"blocks.{i}.mlp.temporal", "mlp", f"temporal_transformer_blocks.{i}.ff", i, temporal),
            ]
        return sites

    def stack_blocks(self, sites: list[Site]) -> list[Site]:
        """The blocks after the first spatial one: temporal 0, spatial 1, temporal 1, ... Between its
        blocks Latte only moves the tokens between the spatial and temporal layouts (a permutation a
        skipped block's input passes through), except after the first spatial block, where it adds
        the temporal position embedding. The stack's ends are temporal blocks, whose inputs and
        outputs share one layout; keep an even number of its blocks computed at its start (the first
        spatial block runs before it in any case)."""
        return [s for s in sites if s.kind == "block"][1:]

    def stack_head(self, sites: list[Site]) -> list[Site]:
        """The first spatial block: always run before the stack, its residual is the stack's signal."""
        return [s for s in sites if s.kind == "block"][:1]

    def example_call(self, batch: int) -> tuple[tuple, dict[str, Any]]:
        config = self.model.config
        param = next(self.model.parameters())
        size = config.sample_size
        hidden = torch.zeros(batch, config.in_channels, config.video_length, size, size, dtype=param.dtype, device=param.device)
        text = torch.zeros(batch, 8, config.caption_channels, dtype=param.dtype, device=param.device)
        timestep = torch.full((batch,), 500, dtype=torch.long, device=param.device)
        return (hidden,), {"timestep": timestep, "encoder_hidden_states": text, "return_dict": False}


@hookimpl
def cachekit_adapters() -> list[type]:
    return [LatteAdapter]
