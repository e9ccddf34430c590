"""AnyFlow (diffusers ``AnyFlowTransformer3DModel`` / ``AnyFlowPipeline``): batched CFG
[uncond, cond], no ``cache_context``.

AnyFlow is a Wan 2.1 backbone distilled into a flow map: every call is conditioned on the source
timestep ``t`` and the target timestep ``r_timestep`` (one value per latent frame each). Its
``AnyFlowTransformerBlock`` is Wan's: a self-attention over all video tokens (``attn1``), a
cross-attention to the text (``attn2``) and a feed-forward (``ffn``), returning one tensor. The
model's input and output are per-frame latents, ``(B, F, C, H, W)``.

The chunk-wise autoregressive ``AnyFlowFARPipeline`` (``AnyFlowFARTransformer3DModel``, the same
blocks with a causal self-attention on diffusers' ``flex`` backend) runs one denoising loop per
chunk of frames. Each call reads a key/value cache of the frames made so far (``kv_cache``: per
block, tensors ``(2, batch, heads, tokens, dim)``, the branches along dim 1) and returns
``(noise_pred, kv_cache)``; between chunks the pipeline fills the cache in a prefill call of its own
(timestep 0, returning ``(None, kv_cache)``), which is no step of a run and computes plainly.
"""

from __future__ import annotations

from typing import Any

from cachekit.adapter import BlockListAdapter
from cachekit.registry import hookimpl


class AnyFlowAdapter(BlockListAdapter):
    """Sites per block i: the block (``blocks.i``, residual), its self-attention (``.attn1``),
    cross-attention (``.attn2``) and feed-forward (``.ffn``). Output ``(B, F, C, H, W)``."""

    name = "anyflow"
    model_classes = ("AnyFlowTransformer3DModel",)
    cfg_layout = "batched"
    call_order = ("uncond", "cond")
    block_list = "blocks"
    output_layout = "BFCHW"
    block_children = (("attn.joint", "attn.joint", "attn1"), ("attn.cross", "attn.cross", "attn2"),
                      ("mlp", "mlp", "ffn"))


class AnyFlowFARAdapter(AnyFlowAdapter):
    """AnyFlow's sites on the FAR model; the key/value cache is cut with the branches along dim 1."""

    name = "anyflow_far"
    model_classes = ("AnyFlowFARTransformer3DModel",)
    batch_axes = {"kv_cache": 1}

    def is_step_call(self, args: tuple, kwargs: dict[str, Any]) -> bool:
        """Not the prefill call that fills the key/value cache between chunks."""
        return not (kwargs.get("kv_cache_flag") or {}).get("is_cache_step", False)


@hookimpl
def cachekit_adapters() -> list[type]:
    return [AnyFlowAdapter, AnyFlowFARAdapter]
