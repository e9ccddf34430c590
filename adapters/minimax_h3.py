"""MiniMax-H3 (diffusers ``MiniMaxH3Transformer3DModel`` / ``MiniMaxH3ModularPipeline``): video and
audio from text, guidance-distilled: one call per step, no guider, no ``cache_context``.

Each call runs one packed sequence ``[text | audio | video]`` rows through
``transformer_blocks``: each block a full self-attention over every row (``attn``; no
cross-attention) and a SwiGLU feed-forward (``ff``), modulated per row by its noise level and
modality, returning the sequence. The output is ``(video, audio)`` rows: video patches ``(1, Nv,
C*p)`` and channel-major stereo audio ``(1, 2*T, C)``. The timestep is the sorted distinct noise
levels of the sequence, ``t = 1 - sigma``, rising over the run.
"""

from __future__ import annotations

from typing import Any

from cachekit.adapter import BlockListAdapter
from cachekit.registry import hookimpl


class MiniMaxH3Adapter(BlockListAdapter):
    """Sites per block i: the block (``transformer_blocks.i``, residual), its self-attention over the
    packed sequence (``.attn``, attn.joint) and feed-forward (``.ff``, mlp). The output's rows lie on
    no frame grid the call states (layout None)."""

    name = "minimax_h3"
    model_classes = ("MiniMaxH3Transformer3DModel",)
    output_layout = None  # type: ignore[assignment]
    block_children = (("attn.joint", "attn.joint", "attn"), ("mlp", "mlp", "ff"))

    def cfg_active(self, pipe: Any) -> bool:
        """Never: the model is guidance-distilled (the pipeline has no guider)."""
        return False


@hookimpl
def cachekit_adapters() -> list[type]:
    return [MiniMaxH3Adapter]
