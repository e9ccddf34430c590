"""Helios (diffusers ``HeliosTransformer3DModel`` / ``HeliosPipeline``, ``HeliosPyramidPipeline``).

The pipelines sample the video in chunks of latent frames, autoregressively: each chunk is a full
denoising loop (the scheduler's timesteps set again per chunk, and in the pyramid pipeline per
stage of the chunk), conditioned on the history latents of earlier chunks, which the model packs
as short, mid and long history tokens before the chunk's tokens. Each loop is a run of its own.

Each ``HeliosTransformerBlock`` runs a self-attention over history and chunk tokens (``attn1``), a
cross-attention to the text (``attn2``; with ``guidance_cross_attn``, on the chunk's tokens only)
and a feed-forward (``ffn``), and returns a single tensor: blocks are residual sites, the parents
of their attentions and feed-forward. The model's output is the chunk's ``(B, C, F, H, W)``.

CFG: one call per branch and step, ``cache_context("cond")`` first and, when ``guidance_scale >
1``, ``cache_context("uncond")``.
"""

from __future__ import annotations

from cachekit.adapter import BlockListAdapter
from cachekit.registry import hookimpl


class HeliosAdapter(BlockListAdapter):
    """Sites per block i: the block (``blocks.i``, residual), and as its children the self-attention
    over history and chunk tokens (``blocks.i.attn1``), the text cross-attention (``blocks.i.attn2``)
    and the feed-forward (``blocks.i.ffn``). The denoiser's output is ``(B, C, F, H, W)``."""

    name = "helios"
    model_classes = ("HeliosTransformer3DModel",)
    cfg_layout = "split"
    call_order = ("cond", "uncond")
    block_list = "blocks"
    block_children = (("attn.joint", "attn.joint", "attn1"), ("attn.cross", "attn.cross", "attn2"), ("mlp", "mlp", "ffn"))


@hookimpl
def cachekit_adapters() -> list[type]:
    return [HeliosAdapter]
