"""More tiny Cosmos pipelines (Cosmos 1.0 text- and video-to-world, Cosmos 2.5 predict and transfer)
and SkyReels-V2 diffusion forcing in asynchronous mode, built offline from seeded random components
(no tokenizer, no text encoder: prompt embeddings are passed in; a stand-in safety checker). Each has
a builder (``BUILDERS``) and the keyword arguments of one seeded CFG call returning latents
(``CALLS``)."""

from __future__ import annotations

import types
from typing import Any

import torch

from tests.pipelines import _finish, _NoGuardrail, tiny_wan_pipeline
from tests.pipelines_i2v import _image, _video, _wan_text, skyreels_v2_df_call, tiny_skyreels_v2_df_pipeline

# ------------------------------------------------------------------------------------------ Cosmos 1.0


def _cosmos1(cls: Any, seed: int, in_channels: int) -> Any:
    """A Cosmos 1.0 (Predict1) pipeline of class ``cls``: 2 layers of 2 heads x 16 dims with learnable
    positions and temporal RoPE scale 2 as in Cosmos 1.0 (no padding-mask input, which needs
    torchvision), the EDM Euler scheduler (Karras sigmas, 0.002 to 80), and the tiny
    ``AutoencoderKLCosmos`` of diffusers' tests (Haar patching, 4x temporal, 4x spatial, 4 channels)."""
    from diffusers import AutoencoderKLCosmos, CosmosTransformer3DModel, EDMEulerScheduler

    torch.manual_seed(seed)
    transformer = CosmosTransformer3DModel(
        in_channels=in_channels, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        mlp_ratio=2.0, text_embed_dim=32, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2),
        rope_scale=(2.0, 1.0, 1.0), concat_padding_mask=False, extra_pos_embed_type="learnable",
    ).eval()
    vae = AutoencoderKLCosmos(
        in_channels=3, out_channels=3, latent_channels=4, encoder_block_out_channels=(8, 8, 8, 8),
        decode_block_out_channels=(8, 8, 8, 8), attention_resolutions=(8,), resolution=64, num_layers=2, patch_size=4,
        patch_type="haar", scaling_factor=1.0, spatial_compression_ratio=4, temporal_compression_ratio=4,
    ).eval()
    scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=80, sigma_data=0.5, sigma_schedule="karras",
                                  num_train_timesteps=1000, prediction_type="epsilon", rho=7.0,
                                  final_sigmas_type="sigma_min")
    return _finish(cls(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae, scheduler=scheduler,
                       safety_checker=_NoGuardrail()))


def tiny_cosmos1_t2w_pipeline(seed: int = 0) -> Any:
    """A ``CosmosTextToWorldPipeline``: the model's input is the noise alone (4 channels)."""
    from diffusers import CosmosTextToWorldPipeline

    return _cosmos1(CosmosTextToWorldPipeline, seed, 4)


def tiny_cosmos1_v2w_pipeline(seed: int = 0) -> Any:
    """A ``CosmosVideoToWorldPipeline``: the model's input is the noise (its first latent frame replaced
    by the image's latents, lightly re-noised each step) and a condition mask (4 + 1 channels); the
    tiny Cosmos VAE encodes the image."""
    from diffusers import CosmosVideoToWorldPipeline

    return _cosmos1(CosmosVideoToWorldPipeline, seed, 5)


def cosmos1_t2w_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 7.0) -> dict[str, Any]:
    """9 frames of 32x32 (3 latent frames of 8x8), returning latents."""
    return dict(**_wan_text(seed), num_frames=9, height=32, width=32, num_inference_steps=steps,
                guidance_scale=guidance_scale, output_type="latent", generator=torch.Generator().manual_seed(seed))


def cosmos1_v2w_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 7.0) -> dict[str, Any]:
    """9 frames of 32x32 (3 latent frames of 8x8) from an image, returning latents."""
    return dict(**cosmos1_t2w_call(pipe, steps, seed, guidance_scale), image=_image(32, 32, seed))


# ------------------------------------------------------------------------------------------ Cosmos 2.5


def _cosmos25_transformer(seed: int, **config: Any) -> Any:
    """Cosmos 2.5's transformer at the tiny sizes: 2 layers of 2 heads x 16 dims whose input is the
    latents and a condition mask (4 + 1 channels), with the projection of the text embeddings
    (64 -> 32 dims; Cosmos 2.5 projects its Reason1 embeddings) and no padding-mask input."""
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(seed)
    return CosmosTransformer3DModel(
        in_channels=5, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2, mlp_ratio=2.0,
        text_embed_dim=32, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2), rope_scale=(1.0, 1.0, 1.0),
        concat_padding_mask=False, extra_pos_embed_type=None, use_crossattn_projection=True,
        crossattn_proj_in_channels=64, encoder_hidden_states_channels=32, **config,
    ).eval()


def _cosmos25_scheduler() -> Any:
    """Cosmos 2.5's flow UniPC scheduler: Karras sigmas from 200 to 0.01 mapped into [0, 1]."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(use_karras_sigmas=True, use_flow_sigmas=True, prediction_type="flow_prediction",
                                   sigma_max=200.0, sigma_min=0.01)


def tiny_cosmos25_predict_pipeline(seed: int = 0) -> Any:
    """A ``Cosmos2_5_PredictBasePipeline``: the tiny Cosmos 2.5 transformer, its scheduler and the tiny
    Wan VAE, which encodes the conditioning video. The timestep is given per latent frame
    ``(B, 1, F, 1, 1)``: conditioned frames get ``conditional_frame_timestep``, the others sigma."""
    from diffusers import Cosmos2_5_PredictBasePipeline

    transformer = _cosmos25_transformer(seed)
    return _finish(Cosmos2_5_PredictBasePipeline(text_encoder=None, tokenizer=None, transformer=transformer,
                                                 vae=tiny_wan_pipeline(seed).vae, scheduler=_cosmos25_scheduler(),
                                                 safety_checker=_NoGuardrail()))


def cosmos25_predict_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 7.0) -> dict[str, Any]:
    """Video2World: 9 frames of 64x64 (3 latent frames of 8x8) continuing the last frame of a 5-frame
    video (one conditioned latent frame), returning latents."""
    return dict(**_wan_text(seed, 64), video=_video(5, 64, 64, seed), num_latent_conditional_frames=1, num_frames=9,
                height=64, width=64, num_inference_steps=steps, guidance_scale=guidance_scale, output_type="latent",
                generator=torch.Generator().manual_seed(seed))


def _nearest_resize_standin() -> None:
    """Cosmos' ControlNet resizes its (all-zero) padding mask with torchvision whatever its config; when
    torchvision is missing its module lacks ``transforms``: give it a nearest resize of the same
    result (``torch.nn.functional.interpolate``, torchvision's own path for tensors)."""
    from diffusers.models.controlnets import controlnet_cosmos

    if hasattr(controlnet_cosmos, "transforms"):
        return

    def resize(image: torch.Tensor, size: list[int], interpolation: Any = None) -> torch.Tensor:
        return torch.nn.functional.interpolate(image, size=list(size), mode="nearest")

    controlnet_cosmos.transforms = types.SimpleNamespace(
        functional=types.SimpleNamespace(resize=resize), InterpolationMode=types.SimpleNamespace(NEAREST="nearest"))


def tiny_cosmos25_transfer_pipeline(seed: int = 0) -> Any:
    """A ``Cosmos2_5_TransferPipeline``: the tiny Cosmos 2.5 transformer with image-context tokens
    (4 zero tokens of 32 dims beside the text) taking a control residual after every block, a
    2-block ``CosmosControlNetModel`` (input: control latents, condition mask and padding mask, 4 + 1
    + 1 channels, beside the latents), the Cosmos 2.5 scheduler and the tiny Wan VAE, which encodes
    the control video and decodes each chunk. Installs ``_nearest_resize_standin``."""
    from diffusers import Cosmos2_5_TransferPipeline, CosmosControlNetModel

    _nearest_resize_standin()
    transformer = _cosmos25_transformer(seed, controlnet_block_every_n=1, img_context_dim_in=32,
                                        img_context_num_tokens=4, img_context_dim_out=32)
    torch.manual_seed(seed + 1)
    controlnet = CosmosControlNetModel(
        n_controlnet_blocks=2, in_channels=4 + 1 + 1, latent_channels=4 + 1 + 1, model_channels=32,
        num_attention_heads=2, attention_head_dim=16, mlp_ratio=2.0, text_embed_dim=32, adaln_lora_dim=4,
        patch_size=(1, 2, 2), max_size=(4, 32, 32), rope_scale=(1.0, 1.0, 1.0), extra_pos_embed_type=None,
        img_context_dim_in=32, img_context_dim_out=32, use_crossattn_projection=True, crossattn_proj_in_channels=64,
        encoder_hidden_states_channels=32,
    ).eval()
    return _finish(Cosmos2_5_TransferPipeline(text_encoder=None, tokenizer=None, transformer=transformer,
                                              vae=tiny_wan_pipeline(seed).vae, scheduler=_cosmos25_scheduler(),
                                              controlnet=controlnet, safety_checker=_NoGuardrail()))


def cosmos25_transfer_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 3.0) -> dict[str, Any]:
    """9 frames of 64x64 (3 latent frames of 8x8) following a 9-frame control video, in one chunk
    (``num_frames_per_chunk=9``), returning latents."""
    return dict(**_wan_text(seed, 64), controls=_video(9, 64, 64, seed), height=64, width=64, num_frames=9,
                num_frames_per_chunk=9, num_inference_steps=steps, guidance_scale=guidance_scale,
                output_type="latent", generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------ SkyReels-V2, asynchronous


def tiny_skyreels_v2_async_pipeline(seed: int = 0) -> Any:
    """The tiny ``SkyReelsV2DiffusionForcingPipeline`` (``tests.pipelines_i2v``); an asynchronous call
    sets its block-causal attention itself."""
    return tiny_skyreels_v2_df_pipeline(seed)


def skyreels_v2_async_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """13 frames of 64x64 (4 latent frames of 8x8, two causal blocks of 2) in one window, denoised
    asynchronously (``ar_step=2``): the second block starts 2 iterations after the first, so a call
    makes ``steps + 2`` loop iterations, each timestep given per latent frame. The pipeline sets the
    transformer's block-causal attention (``num_frame_per_block=2``)."""
    return dict(skyreels_v2_df_call(pipe, steps, seed, guidance_scale), num_frames=13, base_num_frames=13, ar_step=2,
                causal_block_size=2)


BUILDERS: dict[str, Any] = {"cosmos1_t2w": tiny_cosmos1_t2w_pipeline, "cosmos1_v2w": tiny_cosmos1_v2w_pipeline,
                            "cosmos25_predict": tiny_cosmos25_predict_pipeline,
                            "cosmos25_transfer": tiny_cosmos25_transfer_pipeline,
                            "skyreels_v2_async": tiny_skyreels_v2_async_pipeline}
CALLS: dict[str, Any] = {"cosmos1_t2w": cosmos1_t2w_call, "cosmos1_v2w": cosmos1_v2w_call,
                         "cosmos25_predict": cosmos25_predict_call, "cosmos25_transfer": cosmos25_transfer_call,
                         "skyreels_v2_async": skyreels_v2_async_call}
