"""The embedded demo model: a tiny Latte pipeline built offline from seeded random components."""

from __future__ import annotations

from typing import Any

import torch


def tiny_latte_pipeline(frames: int = 4, sample_size: int = 8, layers: int = 2, seed: int = 0) -> Any:
    """A ``LattePipeline`` with a 2-layer, 4-head x 16-dim transformer and a one-block VAE (no tokenizer)."""
    from diffusers import AutoencoderKL, DDIMScheduler, LattePipeline, LatteTransformer3DModel

    torch.manual_seed(seed)
    transformer = LatteTransformer3DModel(
        sample_size=sample_size, num_layers=layers, patch_size=2, attention_head_dim=16, num_attention_heads=4,
        caption_channels=32, in_channels=4, cross_attention_dim=64, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, video_length=frames,
    ).eval()
    vae = AutoencoderKL(
        block_out_channels=(8,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8, sample_size=16,
    ).eval()
    pipe = LattePipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def demo_call(pipe: Any, steps: int = 20, batch: int = 1, seed: int = 0, guidance_scale: float = 7.5) -> dict[str, Any]:
    """Keyword arguments for one seeded pipeline call with fixed prompt embeddings, returning latents."""
    config = pipe.transformer.config
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randn(batch, 6, config.caption_channels, generator=generator)
    pixels = config.sample_size * pipe.vae_scale_factor
    return dict(
        prompt=None, negative_prompt=None, prompt_embeds=prompt, negative_prompt_embeds=torch.zeros_like(prompt),
        num_inference_steps=steps, video_length=config.video_length, height=pixels, width=pixels,
        guidance_scale=guidance_scale, output_type="latent", mask_feature=False,
        generator=torch.Generator().manual_seed(seed + 1),
    )
