"""Tiny image-to-video and video-to-video pipelines of the covered families, built offline from
seeded random components (no tokenizer, no text encoder: prompt embeddings are passed in). Each
family has a builder (``BUILDERS``) and the keyword arguments of one seeded CFG call returning
latents (``CALLS``)."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from tests.pipelines import (_WAN_SIZES, _finish, _noise, _text, tiny_easyanimate_pipeline, tiny_sana_video_transformer,
                             tiny_wan_pipeline)


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A seeded RGB image (3, H, W) in [0, 1]."""
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(2000 + seed))


def _video(frames: int, height: int, width: int, seed: int = 0) -> list:
    """A seeded video as a list of PIL images."""
    from PIL import Image

    pixels = (torch.rand(frames, height, width, 3, generator=torch.Generator().manual_seed(3000 + seed)) * 255)
    return [Image.fromarray(frame.to(torch.uint8).numpy()) for frame in pixels]


def _clip_encoder() -> tuple[Any, Any]:
    """A 2-layer CLIP vision encoder on 32x32 crops (16-dim tokens) and its image processor."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, image_size=32, patch_size=8)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processor = CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32})
    return encoder, processor


# ---------------------------------------------------------------------------------------------- Wan


def tiny_wan_i2v_pipeline(seed: int = 0) -> Any:
    """A Wan 2.1 ``WanImageToVideoPipeline``: the tiny Wan sizes with CLIP image tokens (``image_dim``)
    in the cross-attention, whose input is the noise, a 4-channel first-frame mask and the image's
    latents (4 + 4 + 4 channels); the tiny Wan VAE encodes the image."""
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    encoder, processor = _clip_encoder()
    transformer = WanTransformer3DModel(**{**_WAN_SIZES, "in_channels": 12}, image_dim=16, added_kv_proj_dim=32).eval()
    wan = tiny_wan_pipeline(seed)
    return _finish(WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=wan.vae, scheduler=wan.scheduler,
                                           image_processor=processor, image_encoder=encoder, transformer=transformer))


def tiny_wan_ti2v_pipeline(seed: int = 0) -> Any:
    """A Wan 2.2 TI2V-style ``WanImageToVideoPipeline`` (``expand_timesteps=True``): no image encoder;
    the first latent frame is the image's latents, and the timestep is given per token (0 on the
    first frame's tokens)."""
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**_WAN_SIZES).eval()
    wan = tiny_wan_pipeline(seed)
    return _finish(WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=wan.vae, scheduler=wan.scheduler,
                                           transformer=transformer, expand_timesteps=True))


def tiny_wan_v2v_pipeline(seed: int = 0) -> Any:
    """A ``WanVideoToVideoPipeline``: the tiny Wan pipeline's components; the VAE encodes the input video."""
    from diffusers import WanVideoToVideoPipeline

    wan = tiny_wan_pipeline(seed)
    return _finish(WanVideoToVideoPipeline(tokenizer=None, text_encoder=None, vae=wan.vae, scheduler=wan.scheduler,
                                           transformer=wan.transformer))


def _wan_text(seed: int, dim: int = 32) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(1000 + seed)
    return dict(prompt=None, negative_prompt=None, prompt_embeds=_text(generator, 8, dim),
                negative_prompt_embeds=_text(generator, 8, dim, 0.1))


def wan_i2v_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """9 frames of 64x64 (3 latent frames of 8x8) from an image, returning latents."""
    return dict(**_wan_text(seed), image=_image(64, 64, seed), num_frames=9, height=64, width=64,
                latents=_noise((1, 4, 3, 8, 8), seed), num_inference_steps=steps, guidance_scale=guidance_scale,
                output_type="latent", generator=torch.Generator().manual_seed(seed))


def wan_v2v_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """A 9-frame 64x64 video (3 latent frames of 8x8) edited at strength 0.8, returning latents."""
    return dict(**_wan_text(seed), video=_video(9, 64, 64, seed), height=64, width=64, strength=0.8,
                num_inference_steps=steps, guidance_scale=guidance_scale, output_type="latent",
                generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------- CogVideoX


def _cogvideox(cls: Any, seed: int, sample: int = 8, **config: Any) -> Any:
    """A CogVideoX pipeline of class ``cls``: 2 layers of 4 heads x 16 dims whose input is the noise
    and a conditioning latent video of 4 channels each, concatenated along the channels, and a
    3-block VAE (4x temporal, 4x spatial compression) that encodes the conditioning input."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=32,
        text_embed_dim=32, num_layers=2, sample_width=sample, sample_height=sample, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=8, **config,
    ).eval()
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 3,
        up_block_types=("CogVideoXUpBlock3D",) * 3, block_out_channels=(8, 8, 8), latent_channels=4, layers_per_block=1,
        norm_num_groups=2, temporal_compression_ratio=4,
    ).eval()
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", clip_sample=False, timestep_spacing="trailing")
    return _finish(cls(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler))


def tiny_cogvideox_i2v_pipeline(seed: int = 0) -> Any:
    """A CogVideoX 1.5 ``CogVideoXImageToVideoPipeline``: temporal patching (``patch_size_t=2``), 3-D
    rotary embeddings and the ``ofs`` embedding; the image's latents (first frame, zeros after) are
    concatenated to the noise along the channels."""
    from diffusers import CogVideoXImageToVideoPipeline

    return _cogvideox(CogVideoXImageToVideoPipeline, seed, sample_frames=13, patch_size_t=2, ofs_embed_dim=32,
                      use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False)


def tiny_cogvideox_v2v_pipeline(seed: int = 0) -> Any:
    """A CogVideoX 1.0 ``CogVideoXVideoToVideoPipeline`` (sin-cos positions): the input video's latents,
    noised to the starting step, are the initial latents (4 channels)."""
    from diffusers import CogVideoXVideoToVideoPipeline

    pipe = _cogvideox(CogVideoXVideoToVideoPipeline, seed, sample_frames=9)
    # the video-to-video model denoises the noised video latents alone: 4 input channels
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    sizes = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
    pipe.transformer = CogVideoXTransformer3DModel(**{**sizes, "in_channels": 4}).eval()
    return pipe


def tiny_cogvideox_fun_control_pipeline(seed: int = 0) -> Any:
    """A CogVideoX-Fun ``CogVideoXFunControlPipeline`` (rotary positions): the control video's latents
    are concatenated to the noise along the channels."""
    from diffusers import CogVideoXFunControlPipeline

    return _cogvideox(CogVideoXFunControlPipeline, seed, sample_frames=9, use_rotary_positional_embeddings=True,
                      use_learned_positional_embeddings=False)


def _cogvideox_text(seed: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(1000 + seed)
    return dict(prompt=None, negative_prompt=None, prompt_embeds=_text(generator, 8, 32),
                negative_prompt_embeds=_text(generator, 8, 32, 0.1))


def cogvideox_i2v_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 6.0) -> dict[str, Any]:
    """13 frames of 32x32 (4 latent frames of 8x8) from an image, returning latents (B, F, C, H, W)."""
    return dict(**_cogvideox_text(seed), image=_image(32, 32, seed), num_frames=13, height=32, width=32,
                latents=_noise((1, 4, 4, 8, 8), seed), num_inference_steps=steps, guidance_scale=guidance_scale,
                max_sequence_length=8, output_type="latent", generator=torch.Generator().manual_seed(seed))


def cogvideox_v2v_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 6.0) -> dict[str, Any]:
    """A 9-frame 32x32 video (3 latent frames of 8x8) at strength 0.8, returning latents."""
    return dict(**_cogvideox_text(seed), video=_video(9, 32, 32, seed), height=32, width=32, strength=0.8,
                num_inference_steps=steps, guidance_scale=guidance_scale, max_sequence_length=8,
                output_type="latent", generator=torch.Generator().manual_seed(seed))


def cogvideox_fun_control_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 6.0) -> dict[str, Any]:
    """A 9-frame 32x32 control video (3 latent frames of 8x8), returning latents."""
    return dict(**_cogvideox_text(seed), control_video=_video(9, 32, 32, seed), height=32, width=32,
                latents=_noise((1, 3, 4, 8, 8), seed), num_inference_steps=steps, guidance_scale=guidance_scale,
                max_sequence_length=8, output_type="latent", generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- LTX


def _ltx(cls: Any, seed: int) -> Any:
    """An LTX-Video pipeline of class ``cls``: the tiny LTX transformer (2 layers of 2 heads x 16 dims
    on packed tokens, patch 1) and a tiny causal VAE (4x temporal, 4x spatial compression, 8 latent
    channels) that encodes the conditioning image or video."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=16,
        cross_attention_dim=32, num_layers=2, caption_channels=32,
    ).eval()
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False,
    ).eval()
    return _finish(cls(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                       transformer=transformer))


def tiny_ltx_i2v_pipeline(seed: int = 0) -> Any:
    """An ``LTXImageToVideoPipeline``: the image's latents are the first latent frame, whose tokens get
    timestep 0 (the timestep is per token) and are not denoised."""
    from diffusers import LTXImageToVideoPipeline

    return _ltx(LTXImageToVideoPipeline, seed)


def tiny_ltx_condition_pipeline(seed: int = 0) -> Any:
    """An ``LTXConditionPipeline`` (LTX-Video 0.9.5+): conditions by image or video at a frame index,
    per-token timesteps and per-token video coordinates (``video_coords``)."""
    from diffusers import LTXConditionPipeline

    return _ltx(LTXConditionPipeline, seed)


def _ltx_text(seed: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(1000 + seed)
    mask = torch.ones(1, 8)
    return dict(prompt=None, negative_prompt=None, prompt_embeds=_text(generator, 8, 32), prompt_attention_mask=mask,
                negative_prompt_embeds=_text(generator, 8, 32, 0.1), negative_prompt_attention_mask=mask,
                max_sequence_length=8)


def ltx_i2v_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """9 frames of 32x32 (3 latent frames of 8x8) from an image, returning packed latents."""
    return dict(**_ltx_text(seed), image=_image(32, 32, seed), num_frames=9, height=32, width=32,
                num_inference_steps=steps, guidance_scale=guidance_scale, output_type="latent",
                generator=torch.Generator().manual_seed(seed))


def ltx_condition_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """9 frames of 32x32 (3 latent frames of 8x8) conditioned on a 5-frame video at frame 0,
    returning latents."""
    return dict(**_ltx_text(seed), video=_video(5, 32, 32, seed), frame_index=0, num_frames=9, height=32, width=32,
                num_inference_steps=steps, guidance_scale=guidance_scale, output_type="latent",
                generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------ SkyReels-V2, Sana, EasyAnimate


def tiny_skyreels_v2_i2v_pipeline(seed: int = 0) -> Any:
    """A ``SkyReelsV2ImageToVideoPipeline``: the tiny Wan sizes on SkyReels-V2's transformer with CLIP
    image tokens (``image_dim``), input noise + mask + image latents (12 channels), its flow UniPC
    scheduler and the tiny Wan VAE."""
    from diffusers import SkyReelsV2ImageToVideoPipeline, SkyReelsV2Transformer3DModel, UniPCMultistepScheduler

    torch.manual_seed(seed)
    encoder, processor = _clip_encoder()
    transformer = SkyReelsV2Transformer3DModel(**{**_WAN_SIZES, "in_channels": 12}, image_dim=16,
                                               added_kv_proj_dim=32).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    return _finish(SkyReelsV2ImageToVideoPipeline(tokenizer=None, text_encoder=None, image_encoder=encoder,
                                                  image_processor=processor, transformer=transformer,
                                                  vae=tiny_wan_pipeline(seed).vae, scheduler=scheduler))


def tiny_sana_i2v_pipeline(seed: int = 0) -> Any:
    """A ``SanaImageToVideoPipeline``: the tiny Sana-Video transformer, the flow-matching Euler
    scheduler and the tiny Wan VAE, which encodes the image into the first latent frame; that frame's
    timestep is 0 (the timestep is per frame)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaImageToVideoPipeline

    transformer = tiny_sana_video_transformer(seed)
    return _finish(SanaImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=tiny_wan_pipeline(seed).vae,
                                            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler()))


def _easyanimate(cls: Any, seed: int, in_channels: int, **config: Any) -> Any:
    """An EasyAnimate pipeline of class ``cls`` on the tiny EasyAnimate components, its transformer
    taking ``in_channels`` (the noise and the conditioning latents the model concatenates)."""
    from diffusers import EasyAnimateTransformer3DModel

    base = tiny_easyanimate_pipeline(seed)
    torch.manual_seed(seed)
    sizes = {k: v for k, v in base.transformer.config.items() if not k.startswith("_")}
    transformer = EasyAnimateTransformer3DModel(**{**sizes, "in_channels": in_channels, **config})
    return _finish(cls(vae=base.vae, text_encoder=None, tokenizer=None, transformer=transformer.eval(),
                       scheduler=base.scheduler))


def tiny_easyanimate_inpaint_pipeline(seed: int = 0) -> Any:
    """An ``EasyAnimateInpaintPipeline``: the model takes ``inpaint_latents`` (the VAE's latents of the
    mask and of the masked video, 4 + 4 channels) beside the noise. The mask is encoded, not resized
    (``resize_inpaint_mask_directly=False``): the resizing path reads a VAE setting
    (``cache_mag_vae``) that ``AutoencoderKLMagvit`` does not have in diffusers 0.42.1."""
    from diffusers import EasyAnimateInpaintPipeline

    return _easyanimate(EasyAnimateInpaintPipeline, seed, 12, resize_inpaint_mask_directly=False)


def tiny_easyanimate_control_pipeline(seed: int = 0) -> Any:
    """An ``EasyAnimateControlPipeline``: the model takes ``control_latents`` (the control video's and
    the reference image's latents, 4 + 4 channels) beside the noise. Not in ``BUILDERS``: in diffusers
    0.42.1 its ``__call__`` passes ``text_encoder_index`` to an ``encode_prompt`` that does not take
    it, so every call raises TypeError; tests run its transformer in a hand-written loop."""
    from diffusers import EasyAnimateControlPipeline

    return _easyanimate(EasyAnimateControlPipeline, seed, 12)


def skyreels_v2_i2v_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    return wan_i2v_call(pipe, steps, seed, guidance_scale)


def _masked_text(seed: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(1000 + seed)
    mask = torch.ones(1, 8)
    return dict(prompt=None, negative_prompt=None, prompt_embeds=_text(generator, 8, 32), prompt_attention_mask=mask,
                negative_prompt_embeds=_text(generator, 8, 32, 0.1), negative_prompt_attention_mask=mask)


def sana_i2v_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """9 frames of 64x64 (3 latent frames of 8x8) from an image, returning latents."""
    return dict(**_masked_text(seed), image=_image(64, 64, seed), frames=9, height=64, width=64,
                use_resolution_binning=False, max_sequence_length=8, num_inference_steps=steps,
                guidance_scale=guidance_scale, output_type="latent", generator=torch.Generator().manual_seed(seed))


def easyanimate_inpaint_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """Image-to-video as EasyAnimate does it: a 9-frame 64x64 video whose first frame is kept (mask 0)
    and the rest generated (mask 1), 3 latent frames of 8x8, returning latents."""
    video = torch.rand(1, 3, 9, 64, 64, generator=torch.Generator().manual_seed(2000 + seed))
    mask = torch.ones(1, 1, 9, 64, 64)
    mask[:, :, 0] = 0
    return dict(**_masked_text(seed), video=video, mask_video=mask, num_frames=9, height=64, width=64,
                num_inference_steps=steps, guidance_scale=guidance_scale, output_type="latent",
                generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------- HunyuanVideo, Kandinsky 5, DF


def _hunyuan_vae() -> Any:
    """A tiny ``AutoencoderKLHunyuanVideo`` (4x temporal, 8x spatial compression, 4 latent channels)."""
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4, mid_block_add_attention=False,
    ).eval()


def _hunyuan_transformer(in_channels: int, **config: Any) -> Any:
    from diffusers import HunyuanVideoTransformer3DModel

    return HunyuanVideoTransformer3DModel(
        in_channels=in_channels, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=32,
        pooled_projection_dim=16, rope_axes_dim=(4, 6, 6), **config,
    ).eval()


def _hunyuan_i2v(seed: int, in_channels: int, condition: str, guidance_embeds: bool) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoImageToVideoPipeline

    torch.manual_seed(seed)
    transformer = _hunyuan_transformer(in_channels, image_condition_type=condition, guidance_embeds=guidance_embeds)
    return _finish(HunyuanVideoImageToVideoPipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=_hunyuan_vae(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None, tokenizer_2=None,
        image_processor=None))


def tiny_hunyuan_video_i2v_pipeline(seed: int = 0) -> Any:
    """A ``HunyuanVideoImageToVideoPipeline`` (``image_condition_type="latent_concat"``): the model's
    input is the noise, the image's latents (first frame) and a mask, 4 + 4 + 1 channels; a tiny
    HunyuanVideo VAE encodes the image."""
    return _hunyuan_i2v(seed, 9, "latent_concat", guidance_embeds=False)


def tiny_hunyuan_video_i2v_token_replace_pipeline(seed: int = 0) -> Any:
    """A ``HunyuanVideoImageToVideoPipeline`` with ``image_condition_type="token_replace"`` (HunyuanVideo
    I2V v2): the first latent frame is the image's latents, whose tokens the model modulates with
    timestep 0; guidance embedding as in the released model."""
    return _hunyuan_i2v(seed, 4, "token_replace", guidance_embeds=True)


def tiny_hunyuan_skyreels_i2v_pipeline(seed: int = 0) -> Any:
    """A ``HunyuanSkyreelsImageToVideoPipeline``: the image's latents concatenated to the noise along
    the channels (4 + 4); a tiny HunyuanVideo VAE encodes the image."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanSkyreelsImageToVideoPipeline

    torch.manual_seed(seed)
    transformer = _hunyuan_transformer(8)
    return _finish(HunyuanSkyreelsImageToVideoPipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=_hunyuan_vae(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None, tokenizer_2=None))


def _hunyuan_text(seed: int, guidance_scale: float) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(1000 + seed)
    mask = torch.ones(1, 8)
    return dict(prompt=None, prompt_embeds=_text(generator, 8, 32), prompt_attention_mask=mask,
                pooled_prompt_embeds=torch.randn(1, 16, generator=generator),
                negative_prompt_embeds=_text(generator, 8, 32, 0.1), negative_prompt_attention_mask=mask,
                negative_pooled_prompt_embeds=0.1 * torch.randn(1, 16, generator=generator),
                true_cfg_scale=guidance_scale, guidance_scale=6.0)


def hunyuan_i2v_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """9 frames of 64x64 (3 latent frames of 8x8) from an image, true CFG, returning latents."""
    return dict(**_hunyuan_text(seed, guidance_scale), image=_image(64, 64, seed), num_frames=9, height=64, width=64,
                num_inference_steps=steps, output_type="latent", generator=torch.Generator().manual_seed(seed))


def tiny_kandinsky5_i2v_pipeline(seed: int = 0) -> Any:
    """A ``Kandinsky5I2VPipeline``: the tiny Kandinsky 5 transformer with visual conditioning
    (``visual_cond``: the latents, conditioning latents and a mask, 4 + 4 + 1 channels, channels
    last) and a tiny HunyuanVideo VAE, which encodes the image into the first latent frame."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky5I2VPipeline, Kandinsky5Transformer3DModel

    torch.manual_seed(seed)
    transformer = Kandinsky5Transformer3DModel(
        in_visual_dim=4, in_text_dim=32, in_text_dim2=16, time_dim=32, out_visual_dim=4, patch_size=(1, 2, 2),
        model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=2, axes_dims=(8, 4, 4), visual_cond=True,
    ).eval()
    return _finish(Kandinsky5I2VPipeline(transformer=transformer, vae=_hunyuan_vae(), text_encoder=None,
                                         tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                         scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0)))


def kandinsky5_i2v_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """21 frames of 64x64 (6 latent frames of 8x8) from an image, returning latents. The pipeline
    renormalises the first latent frames against the fifth onwards, so a call needs more than 5."""
    generator = torch.Generator().manual_seed(1000 + seed)
    lengths = torch.tensor([0, 8], dtype=torch.int32)
    return dict(prompt=None, negative_prompt=None, prompt_embeds_qwen=_text(generator, 8, 32),
                negative_prompt_embeds_qwen=_text(generator, 8, 32, 0.1),
                prompt_embeds_clip=torch.randn(1, 16, generator=generator),
                negative_prompt_embeds_clip=0.1 * torch.randn(1, 16, generator=generator),
                prompt_cu_seqlens=lengths, negative_prompt_cu_seqlens=lengths, image=_image(64, 64, seed),
                num_frames=21, height=64, width=64, num_inference_steps=steps, guidance_scale=guidance_scale,
                output_type="latent", generator=torch.Generator().manual_seed(seed))


def _skyreels_df(cls: Any, seed: int) -> Any:
    from diffusers import SkyReelsV2Transformer3DModel, UniPCMultistepScheduler

    torch.manual_seed(seed)
    transformer = SkyReelsV2Transformer3DModel(**_WAN_SIZES).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0)
    return _finish(cls(tokenizer=None, text_encoder=None, transformer=transformer, vae=tiny_wan_pipeline(seed).vae,
                       scheduler=scheduler))


def tiny_skyreels_v2_df_pipeline(seed: int = 0) -> Any:
    """A ``SkyReelsV2DiffusionForcingPipeline``: the tiny Wan sizes on SkyReels-V2's transformer, whose
    timestep is given per latent frame (diffusion forcing)."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    return _skyreels_df(SkyReelsV2DiffusionForcingPipeline, seed)


def tiny_skyreels_v2_df_i2v_pipeline(seed: int = 0) -> Any:
    """A ``SkyReelsV2DiffusionForcingImageToVideoPipeline``: the image's latents are a clean prefix frame."""
    from diffusers import SkyReelsV2DiffusionForcingImageToVideoPipeline

    return _skyreels_df(SkyReelsV2DiffusionForcingImageToVideoPipeline, seed)


def tiny_skyreels_v2_df_v2v_pipeline(seed: int = 0) -> Any:
    """A ``SkyReelsV2DiffusionForcingVideoToVideoPipeline``: the input video's last latent frames are a
    clean prefix the new frames continue."""
    from diffusers import SkyReelsV2DiffusionForcingVideoToVideoPipeline

    return _skyreels_df(SkyReelsV2DiffusionForcingVideoToVideoPipeline, seed)


def skyreels_v2_df_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """9 frames of 64x64 (3 latent frames of 8x8) in one synchronous block (``ar_step=0``), returning latents."""
    return dict(**_wan_text(seed), num_frames=9, height=64, width=64, base_num_frames=9, ar_step=0,
                num_inference_steps=steps, guidance_scale=guidance_scale, output_type="latent",
                generator=torch.Generator().manual_seed(seed))


def skyreels_v2_df_i2v_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    return dict(**skyreels_v2_df_call(pipe, steps, seed, guidance_scale), image=_image(64, 64, seed))


def skyreels_v2_df_v2v_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """A 5-frame 64x64 video continued: 9 new frames after its prefix, returning latents."""
    return dict(**skyreels_v2_df_call(pipe, steps, seed, guidance_scale), video=_video(5, 64, 64, seed), overlap_history=5)


# ----------------------------------------------------------------------- guider pipelines: HunyuanVideo 1.5, Motif


def _cfg_guider(guidance_scale: float) -> Any:
    from diffusers.guiders import ClassifierFreeGuidance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "guiders are experimental"
        return ClassifierFreeGuidance(guidance_scale=guidance_scale)


def _pil_image(height: int, width: int, seed: int = 0) -> Any:
    """A seeded RGB PIL image (the two guider pipelines take PIL images)."""
    from PIL import Image

    pixels = torch.rand(height, width, 3, generator=torch.Generator().manual_seed(2000 + seed)) * 255
    return Image.fromarray(pixels.to(torch.uint8).numpy())


def tiny_hunyuan_video15_i2v_pipeline(seed: int = 0) -> Any:
    """A ``HunyuanVideo15ImageToVideoPipeline``: 2 dual-stream layers of 2 heads x 16 dims (``task_type
    ="i2v"``) whose input is the noise, the image's latents (first frame, zeros after) and a mask (4 +
    4 + 1 channels), SigLIP image tokens (a 1-layer encoder on 32x32 images) beside the text, its
    ClassifierFreeGuidance guider and a tiny HunyuanVideo 1.5 VAE (16x spatial, 4x temporal), which
    encodes the image. The pipeline sizes the video from the image and the model's ``target_size``."""
    from diffusers import (AutoencoderKLHunyuanVideo15, FlowMatchEulerDiscreteScheduler,
                           HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Transformer3DModel)

    from tests.pipelines_multiloop import _siglip_encoder

    torch.manual_seed(seed)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2, num_refiner_layers=1,
        text_embed_dim=32, text_embed_2_dim=16, image_embed_dim=16, rope_axes_dim=(4, 6, 6), task_type="i2v",
        target_size=64,
    ).eval()
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1).eval()
    encoder, processor = _siglip_encoder()
    return _finish(HunyuanVideo15ImageToVideoPipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None, tokenizer_2=None,
        guider=_cfg_guider(6.0), image_encoder=encoder, feature_extractor=processor))


def hunyuan_video15_i2v_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 6.0) -> dict[str, Any]:
    """9 frames of 64x64 (3 latent frames of 4x4) from a 64x64 image, returning latents. The guidance
    scale is the guider's."""
    generator = torch.Generator().manual_seed(1000 + seed)
    kwargs = dict(image=_pil_image(64, 64, seed), prompt=None, num_inference_steps=steps, num_frames=9,
                  output_type="latent", generator=torch.Generator().manual_seed(seed))
    for prefix, scale in (("", 1.0), ("negative_", 0.1)):
        kwargs.update({f"{prefix}prompt_embeds": _text(generator, 8, 32, scale),
                       f"{prefix}prompt_embeds_mask": torch.ones(1, 8),
                       f"{prefix}prompt_embeds_2": _text(generator, 4, 16, scale),
                       f"{prefix}prompt_embeds_mask_2": torch.ones(1, 4)})
    return kwargs


def _t5gemma2_encoder() -> Any:
    """A 1-layer T5Gemma 2 encoder with a 1-layer SigLIP vision tower on 32x32 images (16 tokens of 16
    dims). Motif's image-to-video pipeline encodes the first frame with the text encoder's vision
    tower; its text path is never run (prompt embeddings are passed in). transformers reads
    ``dropout_rate`` from the text config without a default, so it is given."""
    from transformers import T5Gemma2Encoder
    from transformers.models.t5gemma2.configuration_t5gemma2 import T5Gemma2EncoderConfig

    config = T5Gemma2EncoderConfig(
        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=8, dropout_rate=0.0),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8),
        mm_tokens_per_image=4, boi_token_index=60, eoi_token_index=61, image_token_index=62,
    )
    return T5Gemma2Encoder(config).eval()


def tiny_motif_video_i2v_pipeline(seed: int = 0) -> Any:
    """A ``MotifVideoImage2VideoPipeline``: 2 dual-stream and 2 single-stream layers of 2 heads x 16 dims
    whose input is the noise, the first frame's latents and a mask (4 + 4 + 1 channels), with SigLIP
    image tokens (``image_embed_dim``) from the text encoder's vision tower; its ClassifierFreeGuidance
    guider and the tiny Wan VAE, which encodes the first frame."""
    from diffusers import FlowMatchEulerDiscreteScheduler, MotifVideoImage2VideoPipeline, MotifVideoTransformer3DModel

    from tests.pipelines_multiloop import _siglip_encoder

    torch.manual_seed(seed)
    transformer = MotifVideoTransformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2, num_single_layers=2,
        patch_size=2, text_embed_dim=32, rope_axes_dim=(4, 6, 6), image_embed_dim=16,
    ).eval()
    _, processor = _siglip_encoder()
    return _finish(MotifVideoImage2VideoPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), vae=tiny_wan_pipeline(seed).vae,
        text_encoder=_t5gemma2_encoder(), tokenizer=None, transformer=transformer, guider=_cfg_guider(5.0),
        feature_extractor=processor))


def motif_video_i2v_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """9 frames of 64x64 (3 latent frames of 8x8) from a 64x64 image, returning latents. The guidance
    scale is the guider's."""
    return dict(**_masked_text(seed), image=_image(64, 64, seed), num_frames=9, height=64, width=64,
                num_inference_steps=steps, max_sequence_length=8, output_type="latent",
                generator=torch.Generator().manual_seed(seed))


BUILDERS: dict[str, Any] = {"wan_i2v": tiny_wan_i2v_pipeline, "wan_ti2v": tiny_wan_ti2v_pipeline,
                            "wan_v2v": tiny_wan_v2v_pipeline}
CALLS: dict[str, Any] = {"wan_i2v": wan_i2v_call, "wan_ti2v": wan_i2v_call, "wan_v2v": wan_v2v_call}
BUILDERS.update(cogvideox_i2v=tiny_cogvideox_i2v_pipeline, cogvideox_v2v=tiny_cogvideox_v2v_pipeline,
                cogvideox_fun_control=tiny_cogvideox_fun_control_pipeline)
CALLS.update(cogvideox_i2v=cogvideox_i2v_call, cogvideox_v2v=cogvideox_v2v_call,
             cogvideox_fun_control=cogvideox_fun_control_call)
BUILDERS.update(ltx_i2v=tiny_ltx_i2v_pipeline, ltx_condition=tiny_ltx_condition_pipeline)
CALLS.update(ltx_i2v=ltx_i2v_call, ltx_condition=ltx_condition_call)
BUILDERS.update(skyreels_v2_i2v=tiny_skyreels_v2_i2v_pipeline, sana_i2v=tiny_sana_i2v_pipeline,
                easyanimate_inpaint=tiny_easyanimate_inpaint_pipeline)
CALLS.update(skyreels_v2_i2v=skyreels_v2_i2v_call, sana_i2v=sana_i2v_call, easyanimate_inpaint=easyanimate_inpaint_call)
BUILDERS.update(hunyuan_video_i2v=tiny_hunyuan_video_i2v_pipeline,
                hunyuan_video_i2v_token_replace=tiny_hunyuan_video_i2v_token_replace_pipeline,
                hunyuan_skyreels_i2v=tiny_hunyuan_skyreels_i2v_pipeline, kandinsky5_i2v=tiny_kandinsky5_i2v_pipeline,
                skyreels_v2_df=tiny_skyreels_v2_df_pipeline, skyreels_v2_df_i2v=tiny_skyreels_v2_df_i2v_pipeline,
                skyreels_v2_df_v2v=tiny_skyreels_v2_df_v2v_pipeline)
CALLS.update(hunyuan_video_i2v=hunyuan_i2v_call, hunyuan_video_i2v_token_replace=hunyuan_i2v_call,
             hunyuan_skyreels_i2v=hunyuan_i2v_call, kandinsky5_i2v=kandinsky5_i2v_call,
             skyreels_v2_df=skyreels_v2_df_call, skyreels_v2_df_i2v=skyreels_v2_df_i2v_call,
             skyreels_v2_df_v2v=skyreels_v2_df_v2v_call)
BUILDERS.update(hunyuan_video15_i2v=tiny_hunyuan_video15_i2v_pipeline, motif_video_i2v=tiny_motif_video_i2v_pipeline)
CALLS.update(hunyuan_video15_i2v=hunyuan_video15_i2v_call, motif_video_i2v=motif_video_i2v_call)
