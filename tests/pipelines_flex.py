"""Tiny pipelines whose attention runs on diffusers' ``flex`` backend (eagerly on CPU: expect a
UserWarning about unfused flex), built offline from seeded random components: Kandinsky 6 SR (video
super-resolution, one denoising loop per spatial tile, no text, no CFG) and AnyFlow-FAR (chunk-wise
autoregressive, one denoising loop per chunk over a key/value cache, batched CFG). Each family has a
builder (``BUILDERS``) and the keyword arguments of one seeded call (``CALLS``)."""

from __future__ import annotations

from typing import Any

import torch

from tests.pipelines import _WAN_SIZES, _finish, _text, tiny_wan_pipeline
from tests.pipelines_i2v import _video


# ------------------------------------------------------------------------------------ Kandinsky 6 SR


def tiny_kandinsky6_sr_pipeline(seed: int = 0) -> Any:
    """A ``Kandinsky6SRPipeline``: a ``Kandinsky6SRTransformer3DModel`` of 2 blocks of width 32 (2
    heads x 16 dims, RoPE axes 4 + 6 + 6, patch 1x1x1; input the noisy latent, an anchor latent and
    an anchor mask, 4 + 4 + 1 channels; output 4 channels, a plain velocity) trained on one tile size
    of 16x16 pixels, the flow-matching Euler scheduler and a two-level K-VAE of width 8 (one resnet
    per level; 2x spatial and 2x temporal compression, 4 latent channels), which encodes every tile
    and decodes it after denoising. No latent upscaler: the pixel tiles are bilinearly upscaled."""
    from diffusers import (FlowMatchEulerDiscreteScheduler, Kandinsky6SRPipeline, Kandinsky6SRTransformer3DModel,
                           Kandinsky6SRVAE)

    torch.manual_seed(seed)
    # NABLA attention needs the token grid to be a multiple of 8: a 16x16 tile is 8x8 latent tokens
    transformer = Kandinsky6SRTransformer3DModel(
        in_visual_dim=4, out_visual_dim=4, time_dim=32, patch_size=(1, 1, 1), model_dim=32, ff_dim=64,
        num_visual_blocks=2, axes_dims=(4, 6, 6), tile_sizes=((16, 16),),
    ).eval()
    vae = Kandinsky6SRVAE(
        latent_channels=4, encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), layers_per_block=1,
        temporal_compression_ratio=2, temporal_compression_start_level=0,
    ).eval()
    return _finish(Kandinsky6SRPipeline(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler()))


#: Tiles (denoising loops) of ``kandinsky6_sr_call``: an 8x12 video in 8x8 tiles at left 0 and 4.
KANDINSKY6_SR_TILES = 2


def kandinsky6_sr_call(pipe: Any, steps: int, seed: int = 0) -> dict[str, Any]:
    """A seeded 5-frame 8x12 video upscaled 2x (no pre-upscale) in 2 overlapping 8x8 tiles, each
    bilinearly upscaled to 16x16 and encoded (3 latent frames of 8x8), mixed with noise and denoised
    in its own loop of ``steps`` steps: ``2 * steps`` transformer calls of batch 1. Returns the
    blended 5-frame 16x24 video as a ``(1, 5, 3, 16, 24)`` tensor (the pipeline has no latent
    output)."""
    return dict(video=_video(5, 8, 12, seed), resolution_scale=2, num_inference_steps=steps, tiles_batch_size=1,
                output_type="pt", generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ AnyFlow-FAR

FAR_CHUNKS = (1, 2)  # latent frames per chunk of anyflow_far_call: 9 frames -> 3 latent frames of 8x8


def tiny_anyflow_far_pipeline(seed: int = 0) -> Any:
    """An ``AnyFlowFARPipeline``: the tiny Wan sizes (2 blocks, 2 heads x 16 dims, patch 1x2x2, 4 latent
    channels, 32-dim text) on ``AnyFlowFARTransformer3DModel`` (causal FAR self-attention with a KV cache
    across chunks, compressed 1x4x4 patches for context beyond ``full_chunk_limit=3`` chunks, dual-timestep
    embedding) whose default ``chunk_partition`` is ``FAR_CHUNKS``, the flow-map Euler scheduler and the tiny
    Wan VAE (never run by a latent call)."""
    from diffusers import AnyFlowFARPipeline, AnyFlowFARTransformer3DModel, FlowMapEulerDiscreteScheduler

    torch.manual_seed(seed)
    sizes = {k: v for k, v in _WAN_SIZES.items() if k != "qk_norm"}
    transformer = AnyFlowFARTransformer3DModel(**sizes, chunk_partition=FAR_CHUNKS).eval()
    return _finish(AnyFlowFARPipeline(tokenizer=None, text_encoder=None, transformer=transformer,
                                      vae=tiny_wan_pipeline(seed).vae, scheduler=FlowMapEulerDiscreteScheduler()))


def anyflow_far_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """One seeded text-to-video call of 9 frames of 64x64 (3 latent frames of 8x8, in 2 chunks of 1 and 2
    latent frames), ``steps`` denoising steps per chunk, returning latents (1, 4, 3, 8, 8).

    The negative embeddings are passed only when ``guidance_scale > 1``: the pipeline concatenates them
    whenever they are given, CFG or not, and without CFG the batch then no longer fits its KV cache."""
    generator = torch.Generator().manual_seed(1000 + seed)
    prompt, negative = _text(generator, 8, 32), _text(generator, 8, 32, 0.1)
    return dict(prompt=None, negative_prompt=None, prompt_embeds=prompt,
                negative_prompt_embeds=negative if guidance_scale > 1.0 else None, num_frames=9, height=64, width=64,
                num_inference_steps=steps, guidance_scale=guidance_scale, chunk_partition=list(FAR_CHUNKS),
                output_type="latent", generator=torch.Generator().manual_seed(seed))


BUILDERS = {"kandinsky6_sr": tiny_kandinsky6_sr_pipeline, "anyflow_far": tiny_anyflow_far_pipeline}
CALLS = {"kandinsky6_sr": kandinsky6_sr_call, "anyflow_far": anyflow_far_call}
