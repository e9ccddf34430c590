"""Kandinsky 6 (diffusers ``Kandinsky6Transformer3DModel`` / ``Kandinsky6TI2VAPipeline``): split
CFG, ``cache_context("cond")`` then ``cache_context("uncond")``.

The model runs text blocks per modality over the text alone, then ``visual_transformer_blocks``:
fused video/audio blocks. A fused block's video path is the self-attention, text cross-attention
and feed-forward of its ``video_dec_block`` (a container whose own ``forward`` is never called);
the audio path, run only when the pipeline samples audio, is the same in ``audio_dec_block`` plus
two cross-modal attentions. A fused block returns ``(video, audio)``, ``audio`` being ``None`` for a
video-only call, so the blocks are not sites (a block site caches tensors only) and the adapter has
no block stack. The video latents are channels-last, ``(B, F, H, W, C)``.
"""

from __future__ import annotations

from cachekit.adapter import Adapter
from cachekit.registry import hookimpl
from cachekit.sites import Site


class Kandinsky6Adapter(Adapter):
    """Sites per fused block i (``visual_transformer_blocks.i``, block index i, children of the
    denoiser): the video self-attention (``.video_dec_block.self_attention``, attn.joint), text
    cross-attention (``.video_dec_block.cross_attention``, attn.cross) and feed-forward
    (``.video_dec_block.feed_forward``, mlp). Output ``(B, F, H, W, C)``."""

    name = "kandinsky6"
    model_classes = ("Kandinsky6Transformer3DModel",)
    cfg_layout = "split"
    call_order = ("cond", "uncond")

    def sites(self) -> list[Site]:
        sites = [Site("denoiser", "denoiser", "", layout="BFHWC")]
        for i in range(len(self.model.visual_transformer_blocks)):
            path = f"visual_transformer_blocks.{i}.video_dec_block"
            sites += [
                Site(f"blocks.{i}.attn.joint", "attn.joint", f"{path}.self_attention", i, "denoiser"),
                Site(f"blocks.{i}.attn.cross", "attn.cross", f"{path}.cross_attention", i, "denoiser"),
                Site(f"blocks.{i}.mlp", "mlp", f"{path}.feed_forward", i, "denoiser"),
            ]
        return sites


@hookimpl
def cachekit_adapters() -> list[type]:
    return [Kandinsky6Adapter]
