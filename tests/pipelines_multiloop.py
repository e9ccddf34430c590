"""Tiny pipelines that sample in several denoising loops per call, built offline from seeded random
components (no tokenizer, no text encoder: prompt embeddings are passed in): HunyuanVideo FramePack
(one loop per section) and Helios (one loop per chunk and pyramid stage). Each has a builder and
the keyword arguments of one seeded call returning latents."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from tests.pipelines import _finish, _text
from tests.pipelines_i2v import _hunyuan_text, _hunyuan_vae, _image


# -------------------------------------------------------------------------------- HunyuanVideo FramePack


def _siglip_encoder() -> tuple[Any, Any]:
    """A 1-layer SigLIP vision encoder on 32x32 images (16 patches of 16 dims) and its image processor."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    try:  # the PIL-based processor, without torchvision
        from transformers import SiglipImageProcessorPil as SiglipImageProcessor
    except ImportError:
        from transformers import SiglipImageProcessor

    encoder = SiglipVisionModel(SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=32, patch_size=8)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    return encoder, processor


def tiny_framepack_pipeline(seed: int = 0) -> Any:
    """A ``HunyuanVideoFramepackPipeline``: a ``HunyuanVideoFramepackTransformer3DModel`` of 2
    dual-stream and 2 single-stream layers of 2 heads x 16 dims (history embedder, SigLIP image
    projection, guidance embedding), a tiny HunyuanVideo VAE (it encodes the input image) and a
    1-layer SigLIP image encoder."""
    from diffusers import (FlowMatchEulerDiscreteScheduler, HunyuanVideoFramepackPipeline,
                           HunyuanVideoFramepackTransformer3DModel)

    torch.manual_seed(seed)
    transformer = HunyuanVideoFramepackTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2, num_single_layers=2,
        num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=32, pooled_projection_dim=16,
        rope_axes_dim=(4, 6, 6), image_condition_type=None, has_image_proj=True, image_proj_dim=16,
        has_clean_x_embedder=True,
    ).eval()
    encoder, processor = _siglip_encoder()
    return _finish(HunyuanVideoFramepackPipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=_hunyuan_vae(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None, tokenizer_2=None,
        image_encoder=encoder, feature_extractor=processor))


def framepack_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0,
                   sampling_type: str = "inverted_anti_drifting") -> dict[str, Any]:
    """9 frames of 64x64 from an image in sections of 2 latent frames (5 frames): 2 sections, one
    denoising loop each; true CFG (cond, then uncond, one call each); returns latents."""
    return dict(**_hunyuan_text(seed, guidance_scale), image=_image(64, 64, seed), num_frames=9,
                latent_window_size=2, height=64, width=64, num_inference_steps=steps, sampling_type=sampling_type,
                output_type="latent", generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ Helios


def _helios_parts(seed: int, stages: int, gamma: float = 1 / 3) -> dict[str, Any]:
    from diffusers import AutoencoderKLWan, HeliosScheduler, HeliosTransformer3DModel

    torch.manual_seed(seed)
    transformer = HeliosTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, rope_dim=(4, 6, 6),
    ).eval()
    vae = AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4).eval()
    return dict(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                scheduler=HeliosScheduler(stages=stages, shift=1.0, gamma=gamma))


def tiny_helios_pipeline(seed: int = 0) -> Any:
    """A ``HeliosPipeline``: a ``HeliosTransformer3DModel`` of 2 layers of 2 heads x 16 dims (patch
    1x2x2, multi-term memory patches, guidance cross-attention), a one-stage ``HeliosScheduler`` and
    a tiny Wan VAE (the pipeline decodes every chunk, also for latent output)."""
    from diffusers import HeliosPipeline

    return _finish(HeliosPipeline(**_helios_parts(seed, 1)))


def helios_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """Text-to-video, 64x64, in chunks of 2 latent frames (5 frames), 9 frames: 2 chunks, one
    denoising loop each, over history latents of [4, 2, 1] frames; CFG (cond, then uncond)."""
    generator = torch.Generator().manual_seed(1000 + seed)
    return dict(prompt=None, prompt_embeds=_text(generator, 8, 32), negative_prompt_embeds=_text(generator, 8, 32, 0.1),
                height=64, width=64, num_frames=9, num_latent_frames_per_chunk=2, history_sizes=[4, 2, 1],
                num_inference_steps=steps, guidance_scale=guidance_scale, output_type="latent",
                generator=torch.Generator().manual_seed(seed))


def tiny_helios_pyramid_pipeline(seed: int = 0) -> Any:
    """A ``HeliosPyramidPipeline``: the tiny Helios transformer and VAE with a three-stage
    ``HeliosScheduler`` (each chunk denoised at 1/4, 1/2 and full latent resolution). The scheduler's
    ``gamma`` is 0.25: at the default 1/3 the pipeline's block noise covariance for 2x2 patches
    (``(1 + gamma) I - gamma 11^T``, smallest eigenvalue ``1 - 4 gamma + gamma``) is singular and
    its Cholesky factorisation fails on CPU."""
    from diffusers import HeliosPyramidPipeline

    return _finish(HeliosPyramidPipeline(**_helios_parts(seed, 3, gamma=0.25)))


PYRAMID_STEPS = [6, 5, 4]  # steps of the three stages


def helios_pyramid_call(pipe: Any, steps: int | None = None, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """As ``helios_call``, in three pyramid stages per chunk (``PYRAMID_STEPS``, or ``steps`` each):
    2 chunks x 3 stages, one denoising loop each."""
    call = helios_call(pipe, 0, seed, guidance_scale)
    del call["num_inference_steps"]
    return {**call, "pyramid_num_inference_steps_list": PYRAMID_STEPS if steps is None else [steps] * 3}
