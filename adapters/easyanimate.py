"""EasyAnimate (diffusers ``EasyAnimateTransformer3DModel`` / ``EasyAnimatePipeline``): batched CFG
[uncond, cond], no ``cache_context``.

Each ``EasyAnimateTransformerBlock`` runs one joint attention over the text and video tokens
(``attn1``, returning both streams), a feed-forward on the video tokens (``ff``) and, where the
model has one, on the text tokens (``txt_ff``); it returns ``(hidden_states, encoder_hidden_states)``.
"""

from __future__ import annotations

from cachekit.adapter import BlockListAdapter
from cachekit.registry import hookimpl


class EasyAnimateAdapter(BlockListAdapter):
    """Sites per block i: the block (``transformer_blocks.i``, residual, one difference per stream),
    its joint attention (``.attn1``) and feed-forwards (``.ff``; ``.txt_ff`` where present).
    Output ``(B, C, F, H, W)``."""

    name = "easyanimate"
    model_classes = ("EasyAnimateTransformer3DModel",)
    cfg_layout = "batched"
    call_order = ("uncond", "cond")
    #: The rotary tables (one row per video token, or per grid position) are shared by the CFG branches.
    shared_kwargs = ("image_rotary_emb",)
    block_children = (
        ("attn.joint", "attn.joint", "attn1"),
        ("mlp", "mlp", "ff"),
        ("mlp.context", "mlp", "txt_ff"),
    )


@hookimpl
def cachekit_adapters() -> list[type]:
    return [EasyAnimateAdapter]
