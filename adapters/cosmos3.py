"""Cosmos 3 Omni (diffusers ``Cosmos3OmniTransformer`` / ``Cosmos3OmniPipeline``): split CFG,
``cache_context("cond")`` then ``cache_context("uncond")``.

The transformer is a language model over one unbatched packed sequence per call: the prompt's
tokens (the understanding stream) and the vision tokens (the generation stream, noisy and clean
frames). Each decoder layer ``layers.i`` takes and returns both streams, ``(und_seq, gen_seq)``, 2-D
``(tokens, hidden)``; its attention ``self_attn`` runs the text causally over itself and the vision
tokens over both, with weights of their own per stream, and its MLPs are ``mlp`` (text) and
``mlp_moe_gen`` (vision). The call's timestep is ``vision_timesteps``, one value per noisy vision
token. The output is ``(preds_vision, preds_sound, preds_action)``: lists of per-item predictions
``(1, C, F, H, W)``, ``None`` for a modality not generated.
"""

from __future__ import annotations

from cachekit.adapter import BlockListAdapter
from cachekit.registry import hookimpl


class Cosmos3Adapter(BlockListAdapter):
    """Sites per decoder layer i: the layer (``layers.i``, residual on both streams), its attention
    (``.self_attn``, attn.joint) and the vision stream's MLP (``.mlp_moe_gen``, mlp). Output
    ``(1, C, F, H, W)`` per item."""

    name = "cosmos3"
    model_classes = ("Cosmos3OmniTransformer",)
    cfg_layout = "split"
    call_order = ("cond", "uncond")
    timestep_input = "vision_timesteps"
    latent_input = "vision_tokens"

    block_list = "layers"
    block_children = (("attn.joint", "attn.joint", "self_attn"), ("mlp", "mlp", "mlp_moe_gen"))


@hookimpl
def cachekit_adapters() -> list[type]:
    return [Cosmos3Adapter]
