"""Kandinsky 6 (diffusers ``Kandinsky6Transformer3DModel`` / ``Kandinsky6TI2VAPipeline``): split
CFG, ``cache_context("cond")`` then ``cache_context("uncond")``.

The model runs text blocks per modality over the text alone, then ``visual_transformer_blocks``:
fused video/audio blocks. A fused block's video path is the self-attention, text cross-attention
and feed-forward of its ``video_dec_block`` (a container whose own ``forward`` is never called);
the audio path, run only when the pipeline samples audio, is the same in ``audio_dec_block`` plus
two cross-modal attentions. A fused block returns ``(video, audio)``, ``audio`` being ``None`` for a
video-only call (a block site caches the tensors and hands the ``None`` back). The video latents
are channels-last, ``(B, F, H, W, C)``.

The SR model (``Kandinsky6SRTransformer3DModel`` / ``Kandinsky6SRPipeline``) upscales a video tile by
tile, one denoising loop per tile and one call per step (no text, no CFG). Its
``visual_transformer_blocks`` return the hidden states; their self-attention runs on diffusers'
``flex`` backend with a block-sparse (NABLA) mask built from each call's queries and keys.
"""

from __future__ import annotations

from typing import Any

from cachekit.adapter import BlockListAdapter
from cachekit.registry import hookimpl


class Kandinsky6Adapter(BlockListAdapter):
    """Sites per fused block i: the block (``visual_transformer_blocks.i``, residual on the video
    stream, and on the audio stream where the call samples audio), its video self-attention
    (``.video_dec_block.self_attention``, attn.joint), text cross-attention
    (``.video_dec_block.cross_attention``, attn.cross) and feed-forward
    (``.video_dec_block.feed_forward``, mlp). Output ``(B, F, H, W, C)``."""

    name = "kandinsky6"
    model_classes = ("Kandinsky6Transformer3DModel",)
    cfg_layout = "split"
    call_order = ("cond", "uncond")

    block_list = "visual_transformer_blocks"
    output_layout = "BFHWC"
    block_children = (
        ("attn.joint", "attn.joint", "video_dec_block.self_attention"),
        ("attn.cross", "attn.cross", "video_dec_block.cross_attention"),
        ("mlp", "mlp", "video_dec_block.feed_forward"),
    )


class Kandinsky6SRAdapter(BlockListAdapter):
    """Sites per block i: the block (``visual_transformer_blocks.i``, residual), its self-attention
    (attn.joint) and feed-forward (mlp). Output ``(B, F, H, W, C)``."""

    name = "kandinsky6_sr"
    model_classes = ("Kandinsky6SRTransformer3DModel",)
    cfg_layout = "split"
    call_order = ("cond", "uncond")

    block_list = "visual_transformer_blocks"
    output_layout = "BFHWC"
    block_children = (("attn.joint", "attn.joint", "self_attention"), ("mlp", "mlp", "feed_forward"))

    def cfg_active(self, pipe: Any) -> bool:
        """Never: the SR pipeline has no guidance."""
        return False


@hookimpl
def cachekit_adapters() -> list[type]:
    return [Kandinsky6Adapter, Kandinsky6SRAdapter]
