"""Tiny pipelines of other model families, built offline from seeded random components (no tokenizer)."""

from __future__ import annotations

import warnings
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


_WAN_SIZES = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                  text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def tiny_wan_pipeline(seed: int = 0) -> Any:
    """A ``WanPipeline`` with a 2-layer, 2-head x 16-dim transformer (patch 1x2x2; 3 latent frames of
    8x8, 4 channels; 8 text tokens of 32 dims), the flow-matching Euler scheduler diffusers' Wan tests
    use, and a tiny VAE that an output_type="latent" call never runs."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**_WAN_SIZES).eval()
    vae = AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


WAN_LATENT = (3, 8, 8)  # latent frames, height, width of wan_call: 9 frames of 64x64


def wan_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0,
             latent: tuple[int, int, int] = WAN_LATENT) -> dict[str, Any]:
    """Keyword arguments for one seeded call returning latents (1, C, F, H, W) of ``latent`` size."""
    config = pipe.transformer.config
    frames, height, width = latent
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


def _text(generator: torch.Generator, tokens: int, dim: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(1, tokens, dim, generator=generator)


def _noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _finish(pipe: Any) -> Any:
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_cogvideox15_pipeline(seed: int = 0, sample: int = 8) -> Any:
    """A CogVideoX 1.5 ``CogVideoXPipeline``: temporal patching (``patch_size_t=2``, latent frames
    padded to a multiple of 2), 3-D rotary embeddings, 2 layers of 4 heads x 16 dims, 4 latent
    frames of ``sample`` x ``sample`` (the 13 frames a call asks for)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=32,
        text_embed_dim=32, num_layers=2, sample_width=sample, sample_height=sample, sample_frames=13, patch_size=2,
        patch_size_t=2, temporal_compression_ratio=4, max_text_seq_length=8, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False,
    ).eval()
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",), up_block_types=("CogVideoXUpBlock3D",),
        block_out_channels=(8,), latent_channels=4, layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    ).eval()
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", clip_sample=False, timestep_spacing="trailing")
    return _finish(CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler))


def tiny_wan22_pipeline(seed: int = 0, boundary_ratio: float = 0.875) -> Any:
    """A Wan 2.2 A14B-style ``WanPipeline``: two experts of the tiny Wan architecture with their own
    random weights, ``transformer`` for timesteps >= ``boundary_ratio * 1000``, ``transformer_2`` after."""
    from diffusers import WanPipeline

    first = tiny_wan_pipeline(seed)
    second = tiny_wan_pipeline(seed + 1).transformer
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=first.vae, transformer=first.transformer,
                       transformer_2=second, scheduler=first.scheduler, boundary_ratio=boundary_ratio)
    return _finish(pipe)


def tiny_allegro_pipeline(seed: int = 0) -> Any:
    """An ``AllegroPipeline``: 2 layers of 2 heads x 24 dims (3-D RoPE needs head_dim / 3 even),
    DDIM scheduler, no VAE (calls return latents)."""
    from diffusers import AllegroPipeline, AllegroTransformer3DModel, DDIMScheduler

    torch.manual_seed(seed)
    transformer = AllegroTransformer3DModel(
        patch_size=2, patch_size_t=1, num_attention_heads=2, attention_head_dim=24, in_channels=4, out_channels=4,
        num_layers=2, cross_attention_dim=48, sample_height=16, sample_width=16, sample_frames=9, caption_channels=32,
    ).eval()
    return _finish(AllegroPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                                   scheduler=DDIMScheduler()))


def tiny_mochi_pipeline(seed: int = 0) -> Any:
    """A ``MochiPipeline``: 2 layers of 2 heads x 16 dims, patch 2, no VAE (calls return latents)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    torch.manual_seed(seed)
    transformer = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=16, num_layers=2, pooled_projection_dim=16,
        in_channels=4, text_embed_dim=32, time_embed_dim=8, max_sequence_length=8,
    ).eval()
    return _finish(MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None,
                                 tokenizer=None, transformer=transformer))


def tiny_ltx_pipeline(seed: int = 0) -> Any:
    """An ``LTXPipeline``: 2 layers of 2 heads x 16 dims on packed tokens (patch 1), no VAE (calls
    return packed latents; without a VAE the pipeline assumes 32x spatial, 8x temporal compression)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=16,
        cross_attention_dim=32, num_layers=2, caption_channels=32,
    ).eval()
    return _finish(LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None,
                               tokenizer=None, transformer=transformer))


def tiny_hunyuan_video_pipeline(seed: int = 0) -> Any:
    """A ``HunyuanVideoPipeline``: 2 dual-stream and 2 single-stream layers of 2 heads x 16 dims,
    one token-refiner layer, guidance embedding, no text encoders and no VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2, num_single_layers=2,
        num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=32, pooled_projection_dim=16,
        rope_axes_dim=(4, 6, 6),
    ).eval()
    return _finish(HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=None,
                                        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None,
                                        tokenizer_2=None))


def tiny_skyreels_v2_pipeline(seed: int = 0) -> Any:
    """A ``SkyReelsV2Pipeline`` (text-to-video): the tiny Wan sizes on SkyReels-V2's transformer, with
    its flow UniPC scheduler and the tiny Wan VAE (never run by a latent call)."""
    from diffusers import SkyReelsV2Pipeline, SkyReelsV2Transformer3DModel, UniPCMultistepScheduler

    torch.manual_seed(seed)
    transformer = SkyReelsV2Transformer3DModel(**_WAN_SIZES).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0)
    return _finish(SkyReelsV2Pipeline(tokenizer=None, text_encoder=None, transformer=transformer,
                                      vae=tiny_wan_pipeline(seed).vae, scheduler=scheduler))


def tiny_wan_vace_pipeline(seed: int = 0) -> Any:
    """A ``WanVACEPipeline`` with no control video: the tiny Wan sizes plus one VACE control block
    (at block 0) fed by the tiny Wan VAE's encoding of the (zero) conditioning video and mask."""
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel

    torch.manual_seed(seed)
    # control input: inactive + reactive latents (2 x 4 channels) and the mask folded to 8x8 = 64 channels
    transformer = WanVACETransformer3DModel(**_WAN_SIZES, vace_layers=[0], vace_in_channels=2 * 4 + 64).eval()
    wan = tiny_wan_pipeline(seed)
    return _finish(WanVACEPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=wan.vae,
                                   scheduler=wan.scheduler))


def tiny_hunyuan_video15_pipeline(seed: int = 0, guidance_scale: float = 6.0) -> Any:
    """A ``HunyuanVideo15Pipeline`` (text-to-video): 2 dual-stream layers of 2 heads x 16 dims, one
    token-refiner layer, its ClassifierFreeGuidance guider, and a tiny VAE (read for its latent
    channels, never run by a latent call). The model's input is latents, zero image latents and a
    mask: 2 x 4 + 1 channels; the pipeline adds 729 zero image tokens to the text."""
    from diffusers import (AutoencoderKLHunyuanVideo15, FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline,
                           HunyuanVideo15Transformer3DModel)
    from diffusers.guiders import ClassifierFreeGuidance

    torch.manual_seed(seed)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2, num_refiner_layers=1,
        text_embed_dim=32, text_embed_2_dim=16, image_embed_dim=16, rope_axes_dim=(4, 6, 6), task_type="t2v",
        target_size=128,
    ).eval()
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "guiders are experimental"
        guider = ClassifierFreeGuidance(guidance_scale=guidance_scale)
    return _finish(HunyuanVideo15Pipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
                                          scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None,
                                          tokenizer_2=None, guider=guider))


def tiny_chronoedit_pipeline(seed: int = 0) -> Any:
    """A ``ChronoEditPipeline``: the tiny Wan sizes with image cross-attention (``image_dim``), a
    2-layer CLIP vision encoder on 32x32 crops for the image tokens, and the tiny Wan VAE, which
    encodes the input image. The model's input is latents, image latents and a 4-channel mask."""
    from diffusers import ChronoEditPipeline, ChronoEditTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, image_size=32, patch_size=8)).eval()
    sizes = {**_WAN_SIZES, "in_channels": 12}
    transformer = ChronoEditTransformer3DModel(**sizes, image_dim=16, added_kv_proj_dim=32).eval()
    wan = tiny_wan_pipeline(seed)
    return _finish(ChronoEditPipeline(tokenizer=None, text_encoder=None, image_encoder=encoder,
                                      image_processor=CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32}),
                                      transformer=transformer, vae=wan.vae, scheduler=wan.scheduler))


def tiny_sana_video_transformer(seed: int = 0) -> Any:
    """Sana-Video's transformer at the tiny sizes: 2 layers of 2 heads x 16 dims, cross-attention 2 x 16."""
    from diffusers import SanaVideoTransformer3DModel

    torch.manual_seed(seed)
    return SanaVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32, caption_channels=32,
        sample_size=8, rope_max_seq_len=32,
    ).eval()


def tiny_sana_video_pipeline(seed: int = 0) -> Any:
    """A ``SanaVideoPipeline``: 2 layers of 2 heads x 16 dims (linear self-attention, cross-attention
    of 2 x 16), the DPM-Solver++ scheduler, no VAE (the pipeline then assumes 4x temporal, 8x spatial
    compression; calls return latents)."""
    from diffusers import DPMSolverMultistepScheduler, SanaVideoPipeline

    transformer = tiny_sana_video_transformer(seed)
    return _finish(SanaVideoPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                                     scheduler=DPMSolverMultistepScheduler()))


def tiny_kandinsky5_pipeline(seed: int = 0) -> Any:
    """A ``Kandinsky5T2VPipeline``: one text block and 2 visual blocks of width 32, no text encoders
    and no VAE (the pipeline then assumes 4x temporal, 8x spatial compression; calls return latents)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky5T2VPipeline, Kandinsky5Transformer3DModel

    torch.manual_seed(seed)
    transformer = Kandinsky5Transformer3DModel(
        in_visual_dim=4, in_text_dim=32, in_text_dim2=16, time_dim=32, out_visual_dim=4, patch_size=(1, 2, 2),
        model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=2, axes_dims=(8, 4, 4),
    ).eval()
    return _finish(Kandinsky5T2VPipeline(transformer=transformer, vae=None, text_encoder=None, tokenizer=None,
                                         text_encoder_2=None, tokenizer_2=None,
                                         scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0)))


def tiny_easyanimate_pipeline(seed: int = 0) -> Any:
    """An ``EasyAnimatePipeline``: 2 layers of 2 heads x 16 dims (patch 2, 3-D RoPE), the flow-matching
    Euler scheduler, and a tiny Magvit VAE (read for its latent channels, never run by a latent call)."""
    from diffusers import (AutoencoderKLMagvit, EasyAnimatePipeline, EasyAnimateTransformer3DModel,
                           FlowMatchEulerDiscreteScheduler)

    torch.manual_seed(seed)
    vae = AutoencoderKLMagvit(latent_channels=4, block_out_channels=[8, 8, 8, 8], layers_per_block=1,
                              norm_num_groups=4).eval()
    transformer = EasyAnimateTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, patch_size=2, sample_width=16,
        sample_height=16, num_layers=2, mmdit_layers=2, time_embed_dim=32, text_embed_dim=32,
    ).eval()
    return _finish(EasyAnimatePipeline(vae=vae, text_encoder=None, tokenizer=None, transformer=transformer,
                                       scheduler=FlowMatchEulerDiscreteScheduler()))


def tiny_motif_video_pipeline(seed: int = 0, guidance_scale: float = 5.0) -> Any:
    """A ``MotifVideoPipeline``: 2 dual-stream and 2 single-stream layers of 2 heads x 16 dims, its
    ClassifierFreeGuidance guider, and the tiny Wan VAE (read for its latent channels). The model's
    input is latents, zero image latents and a mask: 2 x 4 + 1 channels."""
    from diffusers import FlowMatchEulerDiscreteScheduler, MotifVideoPipeline, MotifVideoTransformer3DModel
    from diffusers.guiders import ClassifierFreeGuidance

    torch.manual_seed(seed)
    transformer = MotifVideoTransformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2, num_single_layers=2,
        patch_size=2, text_embed_dim=32, rope_axes_dim=(4, 6, 6),
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "guiders are experimental"
        guider = ClassifierFreeGuidance(guidance_scale=guidance_scale)
    return _finish(MotifVideoPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), vae=tiny_wan_pipeline(seed).vae,
                                      text_encoder=None, tokenizer=None, transformer=transformer, guider=guider))


class _NoGuardrail:
    """A stand-in for Cosmos' safety checker (the ``cosmos_guardrail`` package and its models are not
    installable here): the pipeline only moves it between devices when no prompt text is given and
    the call returns latents."""

    def to(self, *args: Any, **kwargs: Any) -> "_NoGuardrail":
        return self


def tiny_cosmos_pipeline(seed: int = 0) -> Any:
    """A ``Cosmos2VideoToWorldPipeline``: 2 layers of 2 heads x 16 dims (no padding-mask input, which
    needs torchvision), the tiny Wan VAE, which encodes the conditioning image, and a stand-in
    safety checker (``_NoGuardrail``)."""
    from diffusers import Cosmos2VideoToWorldPipeline, CosmosTransformer3DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    transformer = CosmosTransformer3DModel(
        in_channels=5, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2, mlp_ratio=2.0,
        text_embed_dim=32, adaln_lora_dim=8, max_size=(4, 32, 32), patch_size=(1, 2, 2), rope_scale=(1.0, 1.0, 1.0),
        concat_padding_mask=False, extra_pos_embed_type=None,
    ).eval()
    return _finish(Cosmos2VideoToWorldPipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=tiny_wan_pipeline(seed).vae,
        scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True), safety_checker=_NoGuardrail()))


#: Pixel (frames, height, width) of each family's tiny call, and the latent grid it gives.
PIXELS = {"allegro": (9, 128, 128), "mochi": (13, 128, 128), "ltx": (17, 256, 256), "hunyuan_video": (9, 128, 128),
          "hunyuan_video15": (9, 128, 128),
          "cogvideox15": (13, 64, 64), "wan22": (9, 64, 64), "skyreels_v2": (9, 64, 64), "wan_vace": (9, 64, 64),
          "chronoedit": (5, 64, 64), "sana_video": (9, 128, 128), "kandinsky5": (9, 128, 128),
          "easyanimate": (9, 128, 128), "motif_video": (9, 128, 128), "cosmos": (9, 64, 64)}


def model_call(family: str, pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0,
               pixels: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """Keyword arguments for one seeded CFG call of a tiny pipeline of ``family`` returning latents,
    of ``pixels`` (frames, height, width; default ``PIXELS[family]``; CogVideoX 1.5 takes its size
    from the model). HunyuanVideo runs true CFG (``true_cfg_scale``) unless ``guidance_scale <= 1``;
    its distilled guidance stays 6."""
    if family == "cogvideox15":
        return cogvideox_call(pipe, steps, seed, guidance_scale=guidance_scale)
    frames, height, width = pixels or PIXELS[family]
    if family == "cosmos":  # the first frame is conditioned on an image; the noise comes from the generator
        generator = torch.Generator().manual_seed(1000 + seed)
        return dict(image=torch.rand(3, height, width, generator=torch.Generator().manual_seed(2000 + seed)),
                    prompt=None, negative_prompt=None, prompt_embeds=_text(generator, 8, 32),
                    negative_prompt_embeds=_text(generator, 8, 32, 0.1), num_frames=frames, height=height, width=width,
                    num_inference_steps=steps, guidance_scale=guidance_scale, output_type="latent",
                    generator=torch.Generator().manual_seed(seed))
    if family in ("wan22", "skyreels_v2", "wan_vace", "chronoedit"):  # 4x temporal, 8x spatial VAE
        latent = ((frames - 1) // 4 + 1, height // 8, width // 8)
        kwargs = wan_call(pipe, steps, seed, guidance_scale=guidance_scale, latent=latent)
        if family == "chronoedit":  # an input image, whose latents and mask the model sees beside the noise
            kwargs["image"] = torch.rand(3, height, width, generator=torch.Generator().manual_seed(2000 + seed))
            kwargs["latents"] = _noise((1, pipe.transformer.config.out_channels, *latent), seed)
        return kwargs
    generator = torch.Generator().manual_seed(1000 + seed)
    if family == "hunyuan_video15":  # guidance lives in the pipeline's guider
        kwargs = dict(prompt=None, num_inference_steps=steps, num_frames=frames, height=height, width=width,
                      output_type="latent", generator=torch.Generator().manual_seed(seed))
        for prefix, scale in (("", 1.0), ("negative_", 0.1)):
            kwargs.update({f"{prefix}prompt_embeds": _text(generator, 8, 32, scale), f"{prefix}prompt_embeds_mask": torch.ones(1, 8),
                           f"{prefix}prompt_embeds_2": _text(generator, 4, 16, scale), f"{prefix}prompt_embeds_mask_2": torch.ones(1, 4)})
        return kwargs
    prompt, negative = _text(generator, 8, 32), _text(generator, 8, 32, 0.1)
    if family == "kandinsky5":  # Qwen and CLIP embeddings, with the text's cumulative lengths
        lengths = torch.tensor([0, 8], dtype=torch.int32)
        return dict(prompt=None, negative_prompt=None, prompt_embeds_qwen=prompt, negative_prompt_embeds_qwen=negative,
                    prompt_embeds_clip=torch.randn(1, 16, generator=generator),
                    negative_prompt_embeds_clip=0.1 * torch.randn(1, 16, generator=generator),
                    prompt_cu_seqlens=lengths, negative_prompt_cu_seqlens=lengths, num_inference_steps=steps,
                    num_frames=frames, height=height, width=width, guidance_scale=guidance_scale,
                    output_type="latent", generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(1, 8)
    kwargs: dict[str, Any] = dict(
        prompt=None, prompt_embeds=prompt, prompt_attention_mask=mask, num_inference_steps=steps, num_frames=frames,
        height=height, width=width, output_type="latent", generator=torch.Generator().manual_seed(seed),
    )
    if family == "hunyuan_video":
        kwargs.update(pooled_prompt_embeds=torch.randn(1, 16, generator=generator), guidance_scale=6.0)
        if guidance_scale > 1:
            kwargs.update(negative_prompt_embeds=negative, negative_pooled_prompt_embeds=0.1 * torch.randn(1, 16, generator=generator),
                          negative_prompt_attention_mask=mask, true_cfg_scale=guidance_scale)
        return kwargs
    kwargs.update(negative_prompt=None, negative_prompt_embeds=negative, negative_prompt_attention_mask=mask)
    if family != "motif_video":  # its guidance lives in the pipeline's guider
        kwargs["guidance_scale"] = guidance_scale
    if family == "sana_video":  # frames are `frames`; no resolution binning at tiny sizes
        kwargs.update(frames=kwargs.pop("num_frames"), use_resolution_binning=False)
    if family in ("mochi", "ltx", "motif_video"):
        kwargs["max_sequence_length"] = 8
    return kwargs


BUILDERS = {"allegro": tiny_allegro_pipeline, "mochi": tiny_mochi_pipeline, "ltx": tiny_ltx_pipeline,
            "hunyuan_video": tiny_hunyuan_video_pipeline, "cogvideox15": tiny_cogvideox15_pipeline,
            "wan22": tiny_wan22_pipeline, "skyreels_v2": tiny_skyreels_v2_pipeline,
            "chronoedit": tiny_chronoedit_pipeline, "sana_video": tiny_sana_video_pipeline,
            "kandinsky5": tiny_kandinsky5_pipeline, "easyanimate": tiny_easyanimate_pipeline,
            "motif_video": tiny_motif_video_pipeline,
            "cosmos": tiny_cosmos_pipeline,
            "hunyuan_video15": tiny_hunyuan_video15_pipeline, "wan_vace": tiny_wan_vace_pipeline}


def assert_one_branch_probe(result: Any, build: Any, batched: bool) -> None:
    """``check_adapter``'s one-branch probe covered every site below the denoiser and the stack of a
    batched pipeline (built by ``build``), and said why it did not run on a split one."""
    from cachekit import find_adapter

    if batched:
        sites = [s.name for s in find_adapter(build().transformer).sites()[1:]] + ["stack"]
        assert sorted(result.one_branch_sites) == sorted(sites) and "one-branch calls" in result.checked
    else:
        assert result.one_branch_sites == () and any(n.startswith("one-branch calls: not probed: the split")
                                                     for n in result.notes)
