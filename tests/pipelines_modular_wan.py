"""Tiny diffusers *modular* Wan pipelines beyond Wan 2.1 text-to-video (``tests/pipelines_modular.py``):
Wan 2.2 A14B-style text-to-video (two experts), Wan 2.1 image-to-video, Wan 2.2 image-to-video and
Wan 2.2 VACE, each built offline from seeded random components and run through its core denoise
blocks only (no text, image or VACE encoder, no VAE: embeddings and conditioning latents are passed
in, a call returns the final latents, ``output="latents"``).

The Wan 2.2 loops (``Wan22LoopDenoiser``) pick the expert per step: ``transformer`` with ``guider``
while ``t >= boundary_ratio * 1000``, then ``transformer_2`` with ``guider_2``. Every loop calls its
model once per guidance batch (cond, then uncond), outside any ``cache_context``. The calls set
the same ``guidance_scale`` on both guiders (as ``WanPipeline`` does without ``guidance_scale_2``).
Each pipeline has a builder (``BUILDERS``) and the keyword arguments of one seeded CFG call (``CALLS``)."""

from __future__ import annotations

from typing import Any

import torch

from tests.pipelines import _WAN_SIZES, _noise, tiny_wan22_pipeline, tiny_wan_vace_pipeline, wan_call
from tests.pipelines_i2v import _wan_text, tiny_wan_i2v_pipeline
from tests.pipelines_modular import _modular, _modular_call, _quiet

#: Latent frames, height, width of every call: 9 frames of 64x64 (4x temporal, 8x spatial: the
#: factors the pipelines assume without a VAE); the tiny models have 4 latent channels.
_LATENT = (3, 8, 8)
_PIXELS = dict(num_frames=9, height=64, width=64)


def _modular_wan22(pipeline_cls: Any, blocks: Any, transformer: Any, transformer_2: Any, scheduler: Any,
                   guidance_scale: float, boundary_ratio: float = 0.875) -> Any:
    """A ``pipeline_cls`` of ``blocks`` with two experts, a CFG guider each and ``boundary_ratio``. Built
    directly: ``blocks.init_pipeline()`` gives the Wan 2.1 class of the blocks' model name (diffusers
    only picks a Wan 2.2 class from a saved config that has a ``boundary_ratio``)."""
    from diffusers import ClassifierFreeGuidance

    with _quiet():
        pipe = pipeline_cls(blocks=blocks)
        pipe.update_components(transformer=transformer, transformer_2=transformer_2, scheduler=scheduler,
                               guider=ClassifierFreeGuidance(guidance_scale=guidance_scale),
                               guider_2=ClassifierFreeGuidance(guidance_scale=guidance_scale),
                               boundary_ratio=boundary_ratio)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _wan22_call(pipe: Any, kwargs: dict[str, Any], guidance_scale: float) -> dict[str, Any]:
    """``_modular_call`` that also sets ``guider_2``'s ``guidance_scale``."""
    if pipe.guider_2.guidance_scale != guidance_scale:
        with _quiet():
            pipe.update_components(guider_2=pipe.guider_2.new(guidance_scale=guidance_scale))
    return _modular_call(pipe, kwargs, guidance_scale)


def _image_condition(seed: int) -> torch.Tensor:
    """Stand-in ``image_condition_latents`` (1, 8, 3, 8, 8) of an I2V call: a 4-channel first-frame
    mask (1 on the first latent frame) and 4 channels of "image latents" (seeded noise on the first
    frame, zeros after), the layout of ``WanPrepareFirstFrameLatentsStep``'s output."""
    frames, height, width = _LATENT
    mask = torch.zeros(1, 4, frames, height, width)
    mask[:, :, 0] = 1.0
    image = torch.zeros(1, 4, frames, height, width)
    image[:, :, :1] = _noise((1, 4, 1, height, width), 2000 + seed)
    return torch.cat([mask, image], dim=1)


def _i2v_kwargs(seed: int, steps: int) -> dict[str, Any]:
    """The text embeddings, image conditioning, noise and generator of one seeded I2V call."""
    return dict(**_wan_text(seed), image_condition_latents=_image_condition(seed), **_PIXELS,
                latents=_noise((1, 4, *_LATENT), seed), num_inference_steps=steps,
                generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ Wan 2.2 T2V


def tiny_wan22_modular_pipeline(seed: int = 0, guidance_scale: float = 5.0) -> Any:
    """A ``Wan22ModularPipeline`` of the ``Wan22CoreDenoiseStep`` blocks with the two tiny experts, the
    scheduler (shift 7) and the boundary 0.875 of ``tiny_wan22_pipeline``, and a CFG guider per expert."""
    from diffusers import Wan22ModularPipeline
    from diffusers.modular_pipelines.wan.modular_blocks_wan22 import Wan22CoreDenoiseStep

    parts = tiny_wan22_pipeline(seed)
    return _modular_wan22(Wan22ModularPipeline, Wan22CoreDenoiseStep(), parts.transformer, parts.transformer_2,
                          parts.scheduler, guidance_scale, parts.config.boundary_ratio)


def wan22_modular_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """``wan_call``'s embeddings, noise and generator (9 frames of 64x64, latents (1, 4, 3, 8, 8));
    sets both guiders' ``guidance_scale``."""
    return _wan22_call(pipe, wan_call(pipe, steps, seed, guidance_scale=guidance_scale), guidance_scale)


# ------------------------------------------------------------------------------------------ Wan 2.1 I2V


def tiny_wan_i2v_modular_pipeline(seed: int = 0, guidance_scale: float = 5.0) -> Any:
    """A ``WanImage2VideoModularPipeline`` of the ``WanImage2VideoCoreDenoiseStep`` blocks with the tiny
    I2V transformer (12 input channels, 16-dim CLIP image tokens) and scheduler of ``tiny_wan_i2v_pipeline``."""
    from diffusers.modular_pipelines.wan.modular_blocks_wan_i2v import WanImage2VideoCoreDenoiseStep

    parts = tiny_wan_i2v_pipeline(seed)
    return _modular(WanImage2VideoCoreDenoiseStep(), parts.transformer, parts.scheduler, guidance_scale)


def wan_i2v_modular_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """``_i2v_kwargs`` plus precomputed CLIP ``image_embeds`` (17 tokens of 16 dims, seeded; both
    guidance batches get them)."""
    kwargs = _i2v_kwargs(seed, steps)
    kwargs["image_embeds"] = _noise((1, 17, 16), 4000 + seed)
    return _modular_call(pipe, kwargs, guidance_scale)


# ------------------------------------------------------------------------------------------ Wan 2.2 I2V


def _wan22_i2v_transformer(seed: int) -> Any:
    """A tiny Wan 2.2 A14B I2V expert: the tiny Wan sizes on 12 input channels, no image tokens."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**{**_WAN_SIZES, "in_channels": 12}).eval()


def tiny_wan22_i2v_modular_pipeline(seed: int = 0, guidance_scale: float = 5.0) -> Any:
    """A ``Wan22Image2VideoModularPipeline`` of the ``Wan22Image2VideoCoreDenoiseStep`` blocks: two tiny
    I2V experts (seeds ``seed``, ``seed + 1``), the tiny Wan scheduler, boundary 0.875."""
    from diffusers import Wan22Image2VideoModularPipeline
    from diffusers.modular_pipelines.wan.modular_blocks_wan22_i2v import Wan22Image2VideoCoreDenoiseStep

    scheduler = tiny_wan22_pipeline(seed).scheduler
    return _modular_wan22(Wan22Image2VideoModularPipeline, Wan22Image2VideoCoreDenoiseStep(),
                          _wan22_i2v_transformer(seed), _wan22_i2v_transformer(seed + 1), scheduler, guidance_scale)


def wan22_i2v_modular_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """``_i2v_kwargs`` (no image embeddings); sets both guiders' ``guidance_scale``."""
    return _wan22_call(pipe, _i2v_kwargs(seed, steps), guidance_scale)


# ------------------------------------------------------------------------------------------ Wan 2.2 VACE


def tiny_wan22_vace_modular_pipeline(seed: int = 0, guidance_scale: float = 5.0) -> Any:
    """A ``Wan22VaceModularPipeline`` of the ``Wan22VaceCoreDenoiseStep`` blocks: two tiny VACE experts
    (``tiny_wan_vace_pipeline``'s, seeds ``seed``, ``seed + 1``; one control block at block 0), the
    tiny Wan scheduler, boundary 0.875."""
    from diffusers import Wan22VaceModularPipeline
    from diffusers.modular_pipelines.wan.modular_blocks_wan_vace import Wan22VaceCoreDenoiseStep

    first = tiny_wan_vace_pipeline(seed)
    second = tiny_wan_vace_pipeline(seed + 1).transformer
    return _modular_wan22(Wan22VaceModularPipeline, Wan22VaceCoreDenoiseStep(), first.transformer, second,
                          first.scheduler, guidance_scale)


def wan22_vace_modular_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """``wan_call``'s embeddings, noise and generator plus, in ``denoiser_input_fields`` (shared by
    both guidance batches), ``control_hidden_states`` (1, 72, 3, 8, 8): seeded stand-ins for the
    VAE latents of the inactive and reactive video (2 x 4 channels) and an all-ones mask folded to
    64 channels, and a ``control_hidden_states_scale`` of 1. No reference images."""
    kwargs = wan_call(pipe, steps, seed, guidance_scale=guidance_scale)
    control = torch.cat([_noise((1, 8, *_LATENT), 5000 + seed), torch.ones(1, 64, *_LATENT)], dim=1)
    scale = torch.ones(len(pipe.transformer.config.vace_layers))
    kwargs["denoiser_input_fields"] = dict(control_hidden_states=control, control_hidden_states_scale=scale)
    return _wan22_call(pipe, kwargs, guidance_scale)


BUILDERS = {"wan22": tiny_wan22_modular_pipeline, "wan_i2v": tiny_wan_i2v_modular_pipeline,
            "wan22_i2v": tiny_wan22_i2v_modular_pipeline, "wan22_vace": tiny_wan22_vace_modular_pipeline}
CALLS = {"wan22": wan22_modular_call, "wan_i2v": wan_i2v_modular_call, "wan22_i2v": wan22_i2v_modular_call,
         "wan22_vace": wan22_vace_modular_call}
