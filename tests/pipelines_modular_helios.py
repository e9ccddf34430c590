"""Tiny diffusers *modular* Helios pipelines (``HeliosModularPipeline``, ``HeliosPyramidModularPipeline``,
``HeliosPyramidDistilledModularPipeline``), built offline from the seeded random Helios parts of
``tests/pipelines_multiloop.py`` in the style of ``tests/pipelines_modular.py``.

Each runs its family's text-to-video core denoise blocks (text input, prepare history, [set
timesteps], the chunk loop): no text encoder (prompt embeddings are passed in) and no VAE (the
modular chunk loop feeds the denoised latents back as history, undecoded). The chunk loop denoises
2 chunks in these calls; each chunk is one denoising loop (pyramid: 3 stage loops, each setting the scheduler's
timesteps anew), one cachekit run each. Per step the loop calls the transformer once per guider
condition, in ``cache_context("pred_cond")`` then ``("pred_uncond")``; the history latents and
their indices travel as ``denoiser_input_fields``, which the loop passes only where
``inspect.signature(transformer.forward)`` names them. The loops draw their progress bars with
``tqdm`` directly: ``set_progress_bar_config`` does not reach them.

A call returns the state's ``latents``: the *last* chunk's latents (1, 4, 2, 8, 8), which the
first chunk conditions as history (the classic pipelines return every generated latent frame,
(1, 4, 4, 8, 8); their last 2 frames are these)."""

from __future__ import annotations

from typing import Any

from tests.pipelines_modular import _modular, _modular_call, _quiet
from tests.pipelines_multiloop import _helios_parts, helios_call, helios_pyramid_call


def tiny_helios_modular_pipeline(seed: int = 0) -> Any:
    """A ``HeliosModularPipeline`` of the ``HeliosCoreDenoiseStep`` blocks with the tiny Helios
    transformer and one-stage ``HeliosScheduler`` of ``tiny_helios_pipeline`` and a
    ``ClassifierFreeGuidance`` guider. Unlike ``HeliosPipeline``, the loop passes the timestep cast to
    int64 (749.25 -> 749): with that cast the classic pipeline gives bitwise these latents."""
    from diffusers.modular_pipelines.helios.modular_blocks_helios import HeliosCoreDenoiseStep

    parts = _helios_parts(seed, 1)
    return _modular(HeliosCoreDenoiseStep(), parts["transformer"], parts["scheduler"], 5.0)


def helios_modular_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """``helios_call``'s inputs (64x64, 9 frames in chunks of 2 latent frames: 2 chunks of ``steps``
    steps, history [4, 2, 1]); returns the last chunk's latents. Sets the guider's scale."""
    return _modular_call(pipe, helios_call(pipe, steps, seed, guidance_scale), guidance_scale)


def tiny_helios_pyramid_modular_pipeline(seed: int = 0, zero_init_steps: int = 2) -> Any:
    """A ``HeliosPyramidModularPipeline`` of the ``HeliosPyramidCoreDenoiseStep`` blocks with the tiny
    Helios transformer and three-stage ``HeliosScheduler`` (gamma 0.25) of
    ``tiny_helios_pyramid_pipeline`` and the blocks' default guider, ``ClassifierFreeZeroStarGuidance``
    (CFG-Zero*: the first ``zero_init_steps`` steps of a chunk's stage 0 predict zero). Bitwise the
    latents of ``HeliosPyramidPipeline`` with ``is_cfg_zero_star`` and ``zero_steps=zero_init_steps - 1``
    (with a plain ``ClassifierFreeGuidance``, of the default ``HeliosPyramidPipeline``)."""
    from diffusers import ClassifierFreeZeroStarGuidance
    from diffusers.modular_pipelines.helios.modular_blocks_helios_pyramid import HeliosPyramidCoreDenoiseStep

    parts = _helios_parts(seed, 3, gamma=0.25)
    pipe = _modular(HeliosPyramidCoreDenoiseStep(), parts["transformer"], parts["scheduler"], 5.0)
    with _quiet():
        pipe.update_components(guider=ClassifierFreeZeroStarGuidance(guidance_scale=5.0,
                                                                     zero_init_steps=zero_init_steps))
    return pipe


def helios_pyramid_modular_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """``helios_pyramid_call``'s inputs with ``steps`` per stage: 2 chunks x 3 stages. Also restores
    the guider's ``zero_init_steps``, which the loop sets to 0 past stage 0 and restores only when a
    call ends normally."""
    kwargs = _modular_call(pipe, helios_pyramid_call(pipe, steps, seed, guidance_scale), guidance_scale)
    if hasattr(pipe.guider, "zero_init_steps"):
        pipe.guider.zero_init_steps = pipe.guider.config.zero_init_steps
    return kwargs


def tiny_helios_pyramid_distilled_modular_pipeline(seed: int = 0) -> Any:
    """A ``HeliosPyramidDistilledModularPipeline`` of the ``HeliosPyramidDistilledCoreDenoiseStep``
    blocks with the tiny Helios transformer, a three-stage ``HeliosDMDScheduler`` (gamma 0.25; its
    ``step`` takes the DMD arguments the loop passes, ``HeliosScheduler``'s does not) and a
    ``ClassifierFreeGuidance`` guider of scale 1: one transformer call per step. Bitwise the latents of
    ``tiny_helios_pyramid_pipeline`` with ``is_distilled`` and the same scheduler."""
    from diffusers import ClassifierFreeGuidance, HeliosDMDScheduler, HeliosPyramidDistilledModularPipeline
    from diffusers.modular_pipelines.helios.modular_blocks_helios_pyramid_distilled import (
        HeliosPyramidDistilledCoreDenoiseStep)

    parts = _helios_parts(seed, 3, gamma=0.25)
    with _quiet():  # init_pipeline() would make a HeliosPyramidModularPipeline (its map reads no config)
        pipe = HeliosPyramidDistilledModularPipeline(blocks=HeliosPyramidDistilledCoreDenoiseStep())
        pipe.update_components(transformer=parts["transformer"], guider=ClassifierFreeGuidance(guidance_scale=1.0),
                               scheduler=HeliosDMDScheduler(stages=3, shift=1.0, gamma=0.25))
    return pipe


def helios_pyramid_distilled_modular_call(pipe: Any, steps: int, seed: int = 0,
                                          guidance_scale: float = 1.0) -> dict[str, Any]:
    """As ``helios_pyramid_modular_call`` with ``is_amplify_first_chunk``: the first chunk's stages run
    ``2 * steps`` steps each, the second chunk's ``steps``. Guidance 1 by default (no uncond call)."""
    kwargs = _modular_call(pipe, helios_pyramid_call(pipe, steps, seed, guidance_scale), guidance_scale)
    return {**kwargs, "is_amplify_first_chunk": True}


BUILDERS = {"helios": tiny_helios_modular_pipeline, "helios_pyramid": tiny_helios_pyramid_modular_pipeline,
            "helios_pyramid_distilled": tiny_helios_pyramid_distilled_modular_pipeline}
CALLS = {"helios": helios_modular_call, "helios_pyramid": helios_pyramid_modular_call,
         "helios_pyramid_distilled": helios_pyramid_distilled_modular_call}
