"""Motif-Video (diffusers ``MotifVideoTransformer3DModel`` / ``MotifVideoPipeline``).

HunyuanVideo-like: dual-stream ``transformer_blocks`` (joint attention ``attn``, feed-forwards
``ff`` / ``ff_context``, optionally a text cross-attention ``cross_attn``), then single-stream
``single_transformer_blocks`` (joint attention ``attn`` beside an MLP whose input projection is
``proj_mlp``, optionally ``cross_attn``); every block returns ``(hidden_states,
encoder_hidden_states)``. CFG runs through the pipeline's guider: one call per condition, cond first.
"""

from __future__ import annotations

from typing import Any

from cachekit.adapter import Adapter
from cachekit.registry import hookimpl
from cachekit.sites import Site


class MotifVideoAdapter(Adapter):
    """Sites: dual-stream block i (``blocks.i``, residual) with ``.attn`` (joint), ``.cross_attn``
    where present, ``.ff`` and ``.ff_context``; single-stream block j (``single_blocks.j``, residual,
    block index L + j) with ``.attn``, ``.cross_attn`` where present and ``.proj_mlp``. Output
    ``(B, C, F, H, W)``."""

    name = "motif_video"
    model_classes = ("MotifVideoTransformer3DModel",)
    cfg_layout = "split"
    call_order = ("cond", "uncond")

    def sites(self) -> list[Site]:
        sites = [Site("denoiser", "denoiser", "", layout="BCFHW")]
        dual = len(self.model.transformer_blocks)
        for i, module in enumerate(self.model.transformer_blocks):
            block, path = f"blocks.{i}", f"transformer_blocks.{i}"
            sites += [Site(block, "block", path, i, "denoiser", residual=True),
                      Site(f"{block}.attn.joint", "attn.joint", f"{path}.attn", i, block)]
            if module.cross_attn is not None:
                sites.append(Site(f"{block}.attn.cross", "attn.cross", f"{path}.cross_attn", i, block))
            sites += [Site(f"{block}.mlp", "mlp", f"{path}.ff", i, block),
                      Site(f"{block}.mlp.context", "mlp", f"{path}.ff_context", i, block)]
        for j, module in enumerate(self.model.single_transformer_blocks):
            block, path, index = f"single_blocks.{j}", f"single_transformer_blocks.{j}", dual + j
            sites += [Site(block, "block", path, index, "denoiser", residual=True),
                      Site(f"{block}.attn.joint", "attn.joint", f"{path}.attn", index, block)]
            if module.cross_attn is not None:
                sites.append(Site(f"{block}.attn.cross", "attn.cross", f"{path}.cross_attn", index, block))
            sites.append(Site(f"{block}.mlp", "mlp", f"{path}.proj_mlp", index, block))
        return sites

    def cfg_active(self, pipe: Any) -> bool:
        """Whether the pipeline's guider runs an unconditional prediction (``num_conditions > 1``)."""
        return pipe.guider.num_conditions > 1


@hookimpl
def cachekit_adapters() -> list[type]:
    return [MotifVideoAdapter]
