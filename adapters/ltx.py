"""LTX-Video (diffusers ``LTXVideoTransformer3DModel`` / ``LTXPipeline``): batched CFG [uncond, cond].

The model works on packed tokens: its input and output are ``(B, F*H*W, C)`` sequences (patch size
1 in the released models), with the latent grid passed as ``num_frames``, ``height``, ``width``.
The denoiser's layout is therefore ``"BLC"`` and ``frame_grid`` reads that grid from each call,
which maps the tokens back to frames for frequency-domain kernels (CFG-Cache's FFT). Each
``LTXVideoTransformerBlock`` runs a full spatio-temporal self-attention (``attn1``), a
cross-attention to the text (``attn2``) and a feed-forward (``ff``) and returns one tensor. The
rotary ``(cos, sin)`` pair is computed per sample: like every input whose dim 0 is the batch, it
carries the CFG branches.
"""

from __future__ import annotations

from typing import Any

from cachekit.adapter import SELF_CROSS_FF, BlockListAdapter
from cachekit.registry import hookimpl


class LTXAdapter(BlockListAdapter):
    """Sites per block i: the block (``transformer_blocks.i``, residual), its self-attention
    (``.attn1``), text cross-attention (``.attn2``) and feed-forward (``.ff``). Output: tokens on
    the latent grid divided by the patch size."""

    name = "ltx"
    model_classes = ("LTXVideoTransformer3DModel",)
    cfg_layout = "batched"
    call_order = ("uncond", "cond")
    output_layout = "BLC"
    block_children = SELF_CROSS_FF

    def frame_grid(self, args: tuple, kwargs: dict[str, Any]) -> tuple[int, int, int]:
        config = self.model.config
        return (kwargs["num_frames"] // config.patch_size_t, kwargs["height"] // config.patch_size,
                kwargs["width"] // config.patch_size)


@hookimpl
def cachekit_adapters() -> list[type]:
    return [LTXAdapter]
