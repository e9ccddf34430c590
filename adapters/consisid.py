"""ConsisID (diffusers ``ConsisIDTransformer3DModel`` / ``ConsisIDPipeline``): batched CFG
[uncond, cond], no ``cache_context``. The pipeline needs OpenCV (``cv2``).

ConsisID is CogVideoX 1.0 with identity conditioning: its ``transformer_blocks`` are CogVideoX's
(joint text+video self-attention ``attn1``, feed-forward ``ff``; a block returns ``(hidden_states,
encoder_hidden_states)``), and the latents are ``(B, F, C, H, W)``. With face conditioning
(``is_train_face``), a perceiver cross-attention to the face embedding is added to the hidden states
after every ``cross_attn_interval``-th block, so the blocks then form no block stack.
"""

from __future__ import annotations

from typing import Any

from cachekit.adapter import Adapter
from cachekit.registry import hookimpl
from cachekit.sites import Site

from .cogvideox import CogVideoXAdapter


class ConsisIDAdapter(CogVideoXAdapter):
    """CogVideoX's sites per block i: the block (``transformer_blocks.i``, residual), its joint
    self-attention (``.attn1``) and feed-forward (``.ff``). Output ``(B, F, C, H, W)``."""

    name = "consisid"
    model_classes = ("ConsisIDTransformer3DModel",)

    def stack_blocks(self, sites: list[Site]) -> list[Site]:
        """Every block, unless face conditioning adds to the hidden states between blocks."""
        return [] if self.model.config.is_train_face else super().stack_blocks(sites)

    def example_call(self, batch: int) -> tuple[tuple, dict[str, Any]]:
        return Adapter.example_call(self, batch)


@hookimpl
def cachekit_adapters() -> list[type]:
    return [ConsisIDAdapter]
