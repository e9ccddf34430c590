"""EasyAnimate (diffusers ``EasyAnimateTransformer3DModel`` / ``EasyAnimatePipeline``): batched CFG
[uncond, cond], no ``cache_context``.

Each ``EasyAnimateTransformerBlock`` runs one joint attention over the text and video tokens
(``attn1``, returning both streams), a feed-forward on the video tokens (``ff``) and, where the
model has one, on the text tokens (``txt_ff``); it returns ``(hidden_states, encoder_hidden_states)``.
"""

from __future__ import annotations

from cachekit.adapter import Adapter
from cachekit.registry import hookimpl
from cachekit.sites import Site


class EasyAnimateAdapter(Adapter):
    """Sites per block i: the block (``transformer_blocks.i``, residual, one difference per stream),
    its joint attention (``.attn1``) and feed-forwards (``.ff``; ``.txt_ff`` where present).
    Output ``(B, C, F, H, W)``."""

    name = "easyanimate"
    model_classes = ("EasyAnimateTransformer3DModel",)
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
            if module.txt_ff is not None:
                sites.append(Site(f"{block}.mlp.context", "mlp", f"{path}.txt_ff", i, block))
        return sites


@hookimpl
def cachekit_adapters() -> list[type]:
    return [EasyAnimateAdapter]
