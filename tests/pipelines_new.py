"""Tiny pipelines of the newer diffusers video families, built offline from seeded random
components (no tokenizer, no text encoder: prompt embeddings are passed in)."""

from __future__ import annotations

from typing import Any

import torch

from tests.pipelines import _WAN_SIZES, _finish, _text, tiny_wan_pipeline


def tiny_lucy_edit_pipeline(seed: int = 0) -> Any:
    """A ``LucyEditPipeline``: the tiny Wan sizes on a ``WanTransformer3DModel`` whose input is the
    noisy latents and the latents of the video to edit (2 x 4 channels), and the tiny Wan VAE, which
    encodes that video."""
    from diffusers import LucyEditPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**{**_WAN_SIZES, "in_channels": 8}).eval()
    wan = tiny_wan_pipeline(seed)
    return _finish(LucyEditPipeline(tokenizer=None, text_encoder=None, vae=wan.vae, scheduler=wan.scheduler,
                                    transformer=transformer))


def lucy_edit_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """One seeded call editing a 5-frame 32x32 video (2 latent frames of 4x4), returning latents."""
    from PIL import Image

    generator = torch.Generator().manual_seed(1000 + seed)
    pixels = (torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(2000 + seed)) * 255).to(torch.uint8)
    video = [Image.fromarray(frame.numpy()) for frame in pixels]
    return dict(video=video, prompt=None, negative_prompt=None, prompt_embeds=_text(generator, 8, 32),
                negative_prompt_embeds=_text(generator, 8, 32, 0.1), num_frames=5, height=32, width=32,
                num_inference_steps=steps, guidance_scale=guidance_scale, output_type="latent",
                generator=torch.Generator().manual_seed(seed))


def tiny_kandinsky6_pipeline(seed: int = 0) -> Any:
    """A ``Kandinsky6TI2VAPipeline`` for video alone (no audio VAE, no vocoder, ``sample_audio=False``):
    one text block per modality and 2 fused visual blocks of width 32, no text encoders and no video
    VAE (the pipeline then assumes 4x temporal, 8x spatial compression; calls return latents)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky6TI2VAPipeline, Kandinsky6Transformer3DModel

    torch.manual_seed(seed)
    transformer = Kandinsky6Transformer3DModel(
        in_visual_dim=4, out_visual_dim=4, in_text_dim=32, in_text_dim2=16, time_dim=32, patch_size=(1, 2, 2),
        model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=2, axes_dims=(8, 4, 4), in_audio_dim=4,
        out_audio_dim=4,
    ).eval()
    return _finish(Kandinsky6TI2VAPipeline(transformer=transformer, vae=None, text_encoder=None, tokenizer=None,
                                           text_encoder_2=None, tokenizer_2=None,
                                           scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0)))


def kandinsky6_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """One seeded video-only call of 9 frames of 64x64 (3 latent frames of 8x8), returning latents."""
    generator = torch.Generator().manual_seed(1000 + seed)
    return dict(prompt=None, negative_prompt=None, prompt_embeds=_text(generator, 8, 32),
                pooled_prompt_embeds=torch.randn(1, 16, generator=generator),
                negative_prompt_embeds=_text(generator, 8, 32, 0.1),
                negative_pooled_prompt_embeds=0.1 * torch.randn(1, 16, generator=generator), num_frames=9, height=64,
                width=64, num_inference_steps=steps, guidance_scale=guidance_scale, sample_audio=False,
                output_type="latent", generator=torch.Generator().manual_seed(seed))


def tiny_anyflow_pipeline(seed: int = 0) -> Any:
    """An ``AnyFlowPipeline``: the tiny Wan sizes on ``AnyFlowTransformer3DModel`` (dual-timestep
    embedding), its flow-map Euler scheduler and the tiny Wan VAE (never run by a latent call)."""
    from diffusers import AnyFlowPipeline, AnyFlowTransformer3DModel, FlowMapEulerDiscreteScheduler

    torch.manual_seed(seed)
    sizes = {k: v for k, v in _WAN_SIZES.items() if k != "qk_norm"}
    transformer = AnyFlowTransformer3DModel(**sizes).eval()
    return _finish(AnyFlowPipeline(tokenizer=None, text_encoder=None, transformer=transformer,
                                   vae=tiny_wan_pipeline(seed).vae, scheduler=FlowMapEulerDiscreteScheduler()))


def anyflow_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """One seeded text-to-video call of 9 frames of 64x64 (3 latent frames of 8x8), returning latents."""
    generator = torch.Generator().manual_seed(1000 + seed)
    return dict(prompt=None, negative_prompt=None, prompt_embeds=_text(generator, 8, 32),
                negative_prompt_embeds=_text(generator, 8, 32, 0.1), num_frames=9, height=64, width=64,
                num_inference_steps=steps, guidance_scale=guidance_scale, output_type="latent",
                generator=torch.Generator().manual_seed(seed))


BUILDERS = {"lucy_edit": tiny_lucy_edit_pipeline, "kandinsky6": tiny_kandinsky6_pipeline,
            "anyflow": tiny_anyflow_pipeline}
CALLS = {"lucy_edit": lucy_edit_call, "kandinsky6": kandinsky6_call, "anyflow": anyflow_call}


def tiny_consisid_pipeline(seed: int = 0) -> Any:
    """A ``ConsisIDPipeline`` (needs OpenCV: ``cv2``): 2 layers of 4 heads x 16 dims, no face
    modules (``is_train_face=False``), the model's input being latents and image latents (2 x 4
    channels), the CogVideoX DPM scheduler and a one-block CogVideoX VAE, which encodes the image."""
    from diffusers import CogVideoXDPMScheduler, ConsisIDPipeline, ConsisIDTransformer3DModel

    from tests.pipelines import tiny_cogvideox_pipeline

    torch.manual_seed(seed)
    transformer = ConsisIDTransformer3DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=32,
        text_embed_dim=32, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=8, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False, is_train_face=False,
    ).eval()
    vae = tiny_cogvideox_pipeline(seed).vae
    scheduler = CogVideoXDPMScheduler(prediction_type="v_prediction", clip_sample=False, timestep_spacing="trailing")
    return _finish(ConsisIDPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                                    scheduler=scheduler))


def consisid_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 6.0) -> dict[str, Any]:
    """One seeded call of 9 frames of 16x16 (3 latent frames of 8x8) from a reference image,
    without dynamic CFG, returning latents."""
    generator = torch.Generator().manual_seed(1000 + seed)
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2000 + seed))
    return dict(image=image, prompt=None, negative_prompt=None, prompt_embeds=_text(generator, 8, 32),
                negative_prompt_embeds=_text(generator, 8, 32, 0.1), num_frames=9, height=16, width=16,
                num_inference_steps=steps, guidance_scale=guidance_scale, use_dynamic_cfg=False,
                output_type="latent", generator=torch.Generator().manual_seed(seed))


BUILDERS["consisid"] = tiny_consisid_pipeline
CALLS["consisid"] = consisid_call
