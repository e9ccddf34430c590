"""Tiny pipelines of other model families, built offline from seeded random components (no tokenizer)."""

from __future__ import annotations

from typing import Any

import torch


def tiny_cogvideox_pipeline(seed: int = 0) -> Any:
    """A ``CogVideoXPipeline`` with a 2-layer, 4-head x 16-dim transformer (3 latent frames of 8x8,
    8 text tokens, sin-cos positions) and a one-block VAE that an output_type="latent" call never runs."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=32,
        text_embed_dim=32, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=8,
    ).eval()
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",), up_block_types=("CogVideoXUpBlock3D",),
        block_out_channels=(8,), latent_channels=4, layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    ).eval()
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", clip_sample=False)  # as CogVideoX; "leading" spacing
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cogvideox_latents(pipe: Any, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """Initial noise (B, F, C, H, W), sample i drawn from its own generator seeded ``seed + i``."""
    config = pipe.transformer.config
    frames = (config.sample_frames - 1) // pipe.vae_scale_factor_temporal + 1
    shape = (1, frames, config.in_channels, config.sample_height, config.sample_width)
    return torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(batch)])


def cogvideox_call(pipe: Any, steps: int, seed: int = 0, batch: int = 1, guidance_scale: float = 6.0) -> dict[str, Any]:
    """Keyword arguments for one seeded call returning latents (B, F, C, H, W). Sample i of a batch
    uses the prompt, negative prompt and noise of a single call with ``seed + i``, so a batch of
    two equals two single calls sample by sample."""
    config = pipe.transformer.config
    prompts, negatives = [], []
    for i in range(batch):
        generator = torch.Generator().manual_seed(1000 + seed + i)
        prompts.append(torch.randn(1, config.max_text_seq_length, config.text_embed_dim, generator=generator))
        negatives.append(0.1 * torch.randn(1, config.max_text_seq_length, config.text_embed_dim, generator=generator))
    return dict(
        prompt=None, negative_prompt=None, prompt_embeds=torch.cat(prompts), negative_prompt_embeds=torch.cat(negatives),
        latents=cogvideox_latents(pipe, seed, batch), num_inference_steps=steps, num_frames=config.sample_frames,
        height=config.sample_height * pipe.vae_scale_factor_spatial, width=config.sample_width * pipe.vae_scale_factor_spatial,
        guidance_scale=guidance_scale, output_type="latent", generator=torch.Generator().manual_seed(seed),
    )


def tiny_wan_pipeline(seed: int = 0) -> Any:
    """A ``WanPipeline`` with a 2-layer, 2-head x 16-dim transformer (patch 1x2x2; 3 latent frames of
    8x8, 4 channels; 8 text tokens of 32 dims), the flow-matching Euler scheduler diffusers' Wan tests
    use, and a tiny VAE that an output_type="latent" call never runs."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()
    vae = AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


WAN_LATENT = (3, 8, 8)  # latent frames, height, width of wan_call: 9 frames of 64x64


def wan_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """Keyword arguments for one seeded call returning latents (1, C, F, H, W)."""
    config = pipe.transformer.config
    frames, height, width = WAN_LATENT
    generator = torch.Generator().manual_seed(1000 + seed)
    prompt = torch.randn(1, 8, config.text_dim, generator=generator)
    negative = 0.1 * torch.randn(1, 8, config.text_dim, generator=generator)
    latents = torch.randn(1, config.in_channels, frames, height, width, generator=torch.Generator().manual_seed(seed))
    return dict(
        prompt=None, negative_prompt=None, prompt_embeds=prompt, negative_prompt_embeds=negative, latents=latents,
        num_inference_steps=steps, num_frames=(frames - 1) * pipe.vae_scale_factor_temporal + 1,
        height=height * pipe.vae_scale_factor_spatial, width=width * pipe.vae_scale_factor_spatial,
        guidance_scale=guidance_scale, output_type="latent", generator=torch.Generator().manual_seed(seed),
    )
