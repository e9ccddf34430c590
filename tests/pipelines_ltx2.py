"""Tiny LTX-2 pipelines built offline from seeded random components: a 2-block joint audio-video
transformer (perturbable self-attention, so spatio-temporal guidance changes the pass), the text
connectors, a one-block video VAE (2x spatial, 2x temporal compression) and a small audio VAE. No
tokenizer, no text encoder (prompt embeddings are passed in: 3 stacked "layers" of 16 dims), no
vocoder (the calls return latents)."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from tests.pipelines import _finish

#: Width of the text encoder's hidden states and how many of its layers are stacked in an embedding.
TEXT_DIM, TEXT_LAYERS = 16, 3


def _parts(seed: int) -> dict[str, Any]:
    from diffusers import (AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler,
                           LTX2VideoTransformer3DModel)
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    torch.manual_seed(seed)
    transformer = LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
        audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=4,
        audio_cross_attention_dim=8, num_layers=2, caption_channels=TEXT_DIM, rope_double_precision=False,
        rope_type="split", perturbed_attn=True,
    ).eval()
    connectors = LTX2TextConnectors(
        caption_channels=TEXT_DIM, text_proj_in_factor=TEXT_LAYERS, video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=8, video_connector_num_layers=1,
        video_connector_num_learnable_registers=None, audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, connector_rope_base_seq_len=32, rope_double_precision=False,
        rope_type="split",
    ).eval()
    vae = AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,),
        layers_per_block=(1,), decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
        decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False), downsample_type=("spatial",),
        upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=False, patch_size=1, patch_size_t=1,
        encoder_causal=True, decoder_causal=False,
    ).eval()
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
        mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8,
    ).eval()
    return dict(transformer=transformer, connectors=connectors, vae=vae, audio_vae=audio_vae,
                scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=None, tokenizer=None, vocoder=None)


def tiny_ltx2_pipeline(seed: int = 0) -> Any:
    """An ``LTX2Pipeline``."""
    from diffusers import LTX2Pipeline

    return _finish(LTX2Pipeline(**_parts(seed)))


def tiny_ltx2_i2v_pipeline(seed: int = 0) -> Any:
    """An ``LTX2ImageToVideoPipeline``: the tiny VAE encodes the image into the first latent frame."""
    from diffusers import LTX2ImageToVideoPipeline

    return _finish(LTX2ImageToVideoPipeline(**_parts(seed)))


def ltx2_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 3.0, stg_scale: float = 1.0,
              modality_scale: float = 3.0) -> dict[str, Any]:
    """One seeded call of 5 frames of 32x32 (3 latent frames of 16x16, 5 audio latent frames) with every
    guidance pass on (CFG, spatio-temporal guidance at block 1, modality isolation), no guidance
    rescaling, returning latents. An image-to-video pipeline gets a 32x32 image, not re-compressed."""
    generator = torch.Generator().manual_seed(1000 + seed)
    tokens, dim = 8, TEXT_DIM * TEXT_LAYERS
    mask = torch.ones(1, tokens, dtype=torch.long)
    kwargs = dict(prompt_embeds=torch.randn(1, tokens, dim, generator=generator),
                  negative_prompt_embeds=0.1 * torch.randn(1, tokens, dim, generator=generator),
                  prompt_attention_mask=mask, negative_prompt_attention_mask=mask, height=32, width=32, num_frames=5,
                  frame_rate=25.0, num_inference_steps=steps, guidance_scale=guidance_scale, stg_scale=stg_scale,
                  modality_scale=modality_scale, audio_guidance_scale=guidance_scale, audio_stg_scale=stg_scale,
                  audio_modality_scale=modality_scale, guidance_rescale=0.0, audio_guidance_rescale=0.0,
                  spatio_temporal_guidance_blocks=[1], output_type="latent",
                  generator=torch.Generator().manual_seed(seed))
    if "image" in inspect.signature(type(pipe).__call__).parameters:
        kwargs["image"] = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2000 + seed))
        kwargs["image_crf"] = 0  # no H.264 re-compression of the image (it needs PyAV)
    return kwargs
