"""Tiny diffusers *modular* pipelines (``ModularPipeline`` objects run by pipeline blocks), built
offline from the seeded random components of ``tests/pipelines.py``: Wan 2.1, LTX Video and
HunyuanVideo 1.5 text-to-video.

Each pipeline runs its family's core denoise blocks only (text input, set timesteps, prepare
latents, the denoising loop; LTX also unpacks its latents): no text encoder (prompt embeddings
are passed in) and no VAE (a call returns the final latents, ``output="latents"``). Its
components are ``transformer``, ``scheduler`` and a ``ClassifierFreeGuidance`` ``guider`` (plus
the from-config helpers the blocks declare: LTX's ``pachifier``, HunyuanVideo 1.5's
``video_processor``). Guidance lives in the guider, not in the call: the ``*_modular_call``
functions set it on ``pipe.guider``. Each family has a builder (``BUILDERS``) and the keyword
arguments of one seeded CFG call (``CALLS``); the inputs are those of the classic pipeline's call
in ``tests/pipelines.py``, and a classic pipeline with the same components gives the same latents
(Wan, HunyuanVideo 1.5: bitwise; LTX: to float rounding, as its classic pipeline batches CFG)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from tests.pipelines import (PIXELS, model_call, tiny_hunyuan_video15_pipeline, tiny_ltx_pipeline,
                             tiny_wan_pipeline, wan_call)

#: Keyword arguments of a classic pipeline's call that a modular pipeline has no input for.
_CLASSIC_ONLY = ("prompt", "negative_prompt", "guidance_scale", "output_type", "max_sequence_length")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence diffusers' logged warnings ("guiders are experimental", "component was not created
    using ComponentSpec") while a pipeline is built."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _modular(blocks: Any, transformer: Any, scheduler: Any, guidance_scale: float) -> Any:
    """The pipeline of ``blocks`` (its class from their model name) with these components and a CFG guider."""
    from diffusers import ClassifierFreeGuidance

    with _quiet():
        pipe = blocks.init_pipeline()
        pipe.update_components(transformer=transformer, scheduler=scheduler,
                               guider=ClassifierFreeGuidance(guidance_scale=guidance_scale))
    pipe.set_progress_bar_config(disable=True)  # reaches the denoising loop: a direct sub-block of the core blocks
    return pipe


def _set_guidance(pipe: Any, guidance_scale: float) -> None:
    """Give ``pipe`` a guider of ``guidance_scale`` (a copy of its guider; kept if the scale is already so)."""
    if pipe.guider.guidance_scale != guidance_scale:
        with _quiet():
            pipe.update_components(guider=pipe.guider.new(guidance_scale=guidance_scale))


def _modular_call(pipe: Any, classic_kwargs: dict[str, Any], guidance_scale: float) -> dict[str, Any]:
    _set_guidance(pipe, guidance_scale)
    kwargs = {k: v for k, v in classic_kwargs.items() if k not in _CLASSIC_ONLY}
    kwargs["output"] = "latents"  # the call returns the state's final latents instead of the whole PipelineState
    return kwargs


def modular_latents(output: Any) -> torch.Tensor:
    """The final latents of a modular pipeline call: the tensor a call with ``output="latents"``
    returns, or the ``latents`` of the ``PipelineState`` a call without ``output`` returns."""
    if isinstance(output, torch.Tensor):
        return output
    return output.get("latents")


# ------------------------------------------------------------------------------------------ Wan 2.1


def tiny_wan_modular_pipeline(seed: int = 0, guidance_scale: float = 5.0) -> Any:
    """A ``WanModularPipeline`` of the ``WanCoreDenoiseStep`` blocks with the tiny Wan transformer and
    flow-matching Euler scheduler (shift 7) of ``tiny_wan_pipeline`` and a ``ClassifierFreeGuidance``
    guider. Per step the loop calls the transformer once per guidance batch (cond, then uncond)
    and, unlike ``WanPipeline``, outside any ``cache_context``. Without a VAE the pipeline assumes
    8x spatial, 4x temporal compression (as the tiny VAE's) and 16 latent channels (the tiny model
    has 4): calls pass their latents."""
    from diffusers.modular_pipelines.wan.modular_blocks_wan import WanCoreDenoiseStep

    parts = tiny_wan_pipeline(seed)
    return _modular(WanCoreDenoiseStep(), parts.transformer, parts.scheduler, guidance_scale)


def wan_modular_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """Keyword arguments for one seeded call returning latents (1, 4, 3, 8, 8): ``wan_call``'s prompt
    embeddings (8 tokens of 32 dims), noise and generator, for 9 frames of 64x64. Sets the guider's
    ``guidance_scale`` (1 turns CFG off: one transformer call per step)."""
    return _modular_call(pipe, wan_call(pipe, steps, seed, guidance_scale=guidance_scale), guidance_scale)


# ------------------------------------------------------------------------------------------ LTX Video


def tiny_ltx_modular_pipeline(seed: int = 0, guidance_scale: float = 5.0) -> Any:
    """An ``LTXModularPipeline`` of the ``LTXCoreDenoiseStep`` blocks with the tiny LTX transformer
    (patch 1, matching the default ``pachifier``) and scheduler of ``tiny_ltx_pipeline`` and a
    ``ClassifierFreeGuidance`` guider. Per step the loop calls the transformer once per guidance
    batch, in ``cache_context("pred_cond")`` then ``("pred_uncond")`` (``LTXPipeline`` makes one
    batched call in ``"cond_uncond"``). Without a VAE it assumes 32x spatial, 8x temporal compression."""
    from diffusers.modular_pipelines.ltx.modular_blocks_ltx import LTXCoreDenoiseStep

    parts = tiny_ltx_pipeline(seed)
    return _modular(LTXCoreDenoiseStep(), parts.transformer, parts.scheduler, guidance_scale)


def ltx_modular_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """Keyword arguments for one seeded call: ``model_call("ltx", ...)``'s prompt embeddings and masks,
    17 frames of 256x256, noise drawn from the generator. The call returns the *unpacked* latents
    (1, 8, 3, 8, 8) (``LTXPipeline`` returns them packed, (1, 192, 8)); latents passed in must be
    packed. Sets the guider's ``guidance_scale``."""
    return _modular_call(pipe, model_call("ltx", pipe, steps, seed, guidance_scale=guidance_scale), guidance_scale)


# ------------------------------------------------------------------------------------------ HunyuanVideo 1.5


def tiny_hunyuan_video15_modular_pipeline(seed: int = 0, guidance_scale: float = 5.0) -> Any:
    """A ``HunyuanVideo15ModularPipeline`` of the ``HunyuanVideo15CoreDenoiseStep`` blocks with the
    tiny HunyuanVideo 1.5 transformer and scheduler (shift 7) of ``tiny_hunyuan_video15_pipeline`` and
    a ``ClassifierFreeGuidance`` guider. Per step the loop calls the transformer once per guidance
    batch, in ``cache_context("pred_cond")`` then ``("pred_uncond")``, as ``HunyuanVideo15Pipeline``.
    Without a VAE it assumes 16x spatial, 4x temporal compression (as the tiny VAE's) and 32 latent
    channels (the tiny model has 4): calls pass their latents."""
    from diffusers.modular_pipelines.hunyuan_video1_5.modular_blocks_hunyuan_video1_5 import (
        HunyuanVideo15CoreDenoiseStep)

    parts = tiny_hunyuan_video15_pipeline(seed)
    return _modular(HunyuanVideo15CoreDenoiseStep(), parts.transformer, parts.scheduler, guidance_scale)


def hunyuan_video15_modular_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """Keyword arguments for one seeded call returning latents (1, 4, 3, 8, 8): the embeddings and
    masks of ``model_call("hunyuan_video15", ...)`` (two text encoders: 8 x 32 and 4 x 16) for 9
    frames of 128x128, and the noise its generator would draw. Sets the guider's ``guidance_scale``."""
    kwargs = model_call("hunyuan_video15", pipe, steps, seed, guidance_scale=guidance_scale)
    frames, height, width = PIXELS["hunyuan_video15"]
    shape = (1, pipe.transformer.config.out_channels, (frames - 1) // pipe.vae_scale_factor_temporal + 1,
             height // pipe.vae_scale_factor_spatial, width // pipe.vae_scale_factor_spatial)
    kwargs["latents"] = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return _modular_call(pipe, kwargs, guidance_scale)


BUILDERS = {"wan": tiny_wan_modular_pipeline, "ltx": tiny_ltx_modular_pipeline,
            "hunyuan_video15": tiny_hunyuan_video15_modular_pipeline}
CALLS = {"wan": wan_modular_call, "ltx": ltx_modular_call, "hunyuan_video15": hunyuan_video15_modular_call}
