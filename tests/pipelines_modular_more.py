"""More tiny diffusers *modular* pipelines, built offline like those of ``tests/pipelines_modular.py``:
LTX-2 and LTX-2.5 (joint audio-video, guided by a pair of ``LTX2Guidance`` guiders), Echo (an LTX-2
transformer, guidance-free) and Cosmos 3 Omni and its distilled variant (a language model over packed
token sequences).

Each pipeline runs its family's core denoise blocks, headed by the step that turns the call's text
input into what they take (LTX-2 and Echo: the text connectors, fed prompt embeddings; Cosmos 3: the
prompt's tokenization): no text encoder, no VAE (a call returns the final latents, ``output="latents"``).
Each family has a builder (``BUILDERS``) and the keyword arguments of one seeded call (``CALLS``)."""

from __future__ import annotations

from typing import Any

import torch

from tests.pipelines_ltx2 import _parts as _ltx2_parts
from tests.pipelines_ltx2 import ltx2_call
from tests.pipelines_modular import _quiet
from tests.pipelines_more import _tokenizer

#: Keyword arguments of ``ltx2_call`` that a modular LTX-2 pipeline has no input for (its guiders hold them).
_LTX2_CLASSIC_ONLY = ("guidance_scale", "stg_scale", "modality_scale", "audio_guidance_scale", "audio_stg_scale",
                      "audio_modality_scale", "guidance_rescale", "audio_guidance_rescale",
                      "spatio_temporal_guidance_blocks", "output_type", "generator")


def _guiders(pipe: Any, **scales: float) -> None:
    """Give each named guider of ``pipe`` (``guider``, ``audio_guider``) a copy with this ``guidance_scale``."""
    for name, scale in scales.items():
        if getattr(pipe, name).guidance_scale != scale:
            with _quiet():
                pipe.update_components(**{name: getattr(pipe, name).new(guidance_scale=scale)})


# ------------------------------------------------------------------------------------------ LTX-2, LTX-2.5


def _ltx25_parts(seed: int, audio_channels: int = 4) -> dict[str, Any]:
    """``_ltx2_parts`` with an LTX-2.5-style transformer and connectors: gated attention, cross-attention
    modulation with a static (timestep-independent) prompt table, no caption projection in the
    transformer (the connectors project per modality), no video feed-forward bias; ``audio_channels``
    per audio token."""
    from diffusers import LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    from tests.pipelines_ltx2 import TEXT_DIM, TEXT_LAYERS

    parts = _ltx2_parts(seed)
    torch.manual_seed(seed)
    parts["transformer"] = LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
        audio_in_channels=audio_channels, audio_out_channels=audio_channels, audio_num_attention_heads=2,
        audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2, caption_channels=TEXT_DIM,
        rope_double_precision=False, rope_type="split", perturbed_attn=True, gated_attn=True, cross_attn_mod=True,
        audio_gated_attn=True, audio_cross_attn_mod=True, use_prompt_embeddings=False, ff_bias=False,
        use_prompt_adaln_single=False,
    ).eval()
    parts["connectors"] = LTX2TextConnectors(
        caption_channels=TEXT_DIM, text_proj_in_factor=TEXT_LAYERS, video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=8, video_connector_num_layers=1,
        video_connector_num_learnable_registers=None, video_gated_attn=True, audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=4, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, audio_gated_attn=True, connector_rope_base_seq_len=32,
        rope_double_precision=False, rope_type="split", per_modality_projections=True, video_hidden_dim=16,
        audio_hidden_dim=8,
    ).eval()
    return parts


def _ltx2_modular(pipeline_class: str, parts: dict[str, Any]) -> Any:
    """A ``pipeline_class`` of ``LTX2CoreDenoiseStep`` headed by ``LTX2TextConnectorStep`` with ``parts``
    and LTX-2 guiders: CFG 3, STG 1 on block 1, modality isolation 3, no rescale, for video and audio."""
    import diffusers
    from diffusers import LTX2Guidance
    from diffusers.modular_pipelines.ltx2.encoders import LTX2TextConnectorStep
    from diffusers.modular_pipelines.ltx2.modular_blocks_ltx2 import LTX2CoreDenoiseStep

    blocks = LTX2CoreDenoiseStep()
    blocks.sub_blocks.insert("connectors", LTX2TextConnectorStep(), 0)
    tokenizer = _tokenizer()  # the connector step reads only its padding side
    tokenizer.padding_side = "left"
    with _quiet():
        pipe = getattr(diffusers, pipeline_class)(blocks=blocks)
        guider = LTX2Guidance(guidance_scale=3.0, stg_scale=1.0, modality_scale=3.0,
                              spatio_temporal_guidance_blocks=[1])
        pipe.update_components(transformer=parts["transformer"], scheduler=parts["scheduler"],
                               connectors=parts["connectors"], audio_vae=parts["audio_vae"], tokenizer=tokenizer,
                               guider=guider, audio_guider=guider.new(spatio_temporal_guidance_blocks=None))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_ltx2_modular_pipeline(seed: int = 0) -> Any:
    """An ``LTX2ModularPipeline`` with the tiny LTX-2 transformer, connectors, audio VAE and scheduler of
    ``tests/pipelines_ltx2.py``. Per step the loop calls the transformer once per guidance pass, each
    unbatched, in ``cache_context("pred_cond")``, ``("pred_uncond")``, ``("pred_cond_stg")`` (block 1's
    self-attention perturbed), ``("pred_cond_modality")`` (no audio<->video attention): the union of
    the active passes of ``guider`` and ``audio_guider``. Without a VAE it assumes 32x spatial, 8x
    temporal compression."""
    return _ltx2_modular("LTX2ModularPipeline", _ltx2_parts(seed))


def tiny_ltx25_modular_pipeline(seed: int = 0) -> Any:
    """An ``LTX25ModularPipeline`` (LTX-2.5 differs from LTX-2 in its decoder only: same core denoise
    blocks and passes) with an LTX-2.5-style tiny transformer and connectors (``_ltx25_parts``)."""
    return _ltx2_modular("LTX25ModularPipeline", _ltx25_parts(seed))


def ltx2_modular_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 3.0) -> dict[str, Any]:
    """Keyword arguments for one seeded call: ``ltx2_call``'s prompt embeddings and masks (the connector
    step runs them as one [uncond, cond] batch) and the noise its generator draws (video, packed, then
    audio), for 3 latent frames of 16x16 (17 frames of 512x512 at 32x/8x) and 5 audio frames. Returns
    packed video latents (1, 768, 4); with the tiny VAE's 2x compression an ``LTX2Pipeline`` of the same
    parts gives the same latents to float rounding. Sets both guiders' ``guidance_scale`` (1: no
    uncond pass; the STG and modality passes stay)."""
    from diffusers.modular_pipelines.ltx2.denoise import _pack_latents

    _guiders(pipe, guider=guidance_scale, audio_guider=guidance_scale)
    kwargs = {k: v for k, v in ltx2_call(pipe, steps, seed).items() if k not in _LTX2_CLASSIC_ONLY}
    generator = torch.Generator().manual_seed(seed)
    latents = _pack_latents(torch.randn(1, pipe.transformer.config.in_channels, 3, 16, 16, generator=generator))
    audio_latents = torch.randn(1, pipe.audio_vae.config.latent_channels, 5, 2, generator=generator)
    kwargs.update(num_frames=17, height=512, width=512, latents=latents, audio_latents=audio_latents, batch_size=1,
                  dtype=torch.float32, output="latents")
    return kwargs


# ------------------------------------------------------------------------------------------ Echo


def tiny_echo_modular_pipeline(seed: int = 0) -> Any:
    """An ``EchoModularPipeline`` of ``EchoDenoiseStep`` headed by ``EchoTextConnectorStep`` (cond
    prompt only) with the LTX-2.5-style tiny transformer and connectors of ``_ltx25_parts``, its audio
    tokens of 16 channels (one latent channel of Echo's 16 mel bins: without an audio VAE the
    pipeline assumes 16). No guider: per step the DMD loop calls the transformer once, outside any
    ``cache_context``, then re-noises its x0 prediction to the next sigma with fresh noise. Without a
    VAE it assumes 32x spatial, 8x temporal compression."""
    from diffusers import EchoModularPipeline
    from diffusers.modular_pipelines.echo.encoders import EchoTextConnectorStep
    from diffusers.modular_pipelines.echo.modular_blocks_echo import EchoDenoiseStep

    parts = _ltx25_parts(seed, audio_channels=16)
    blocks = EchoDenoiseStep()
    blocks.sub_blocks.insert("connectors", EchoTextConnectorStep(), 0)
    tokenizer = _tokenizer()  # the connector step reads only its padding side
    tokenizer.padding_side = "left"
    with _quiet():
        pipe = EchoModularPipeline(blocks=blocks)
        pipe.update_components(transformer=parts["transformer"], connectors=parts["connectors"], tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def echo_modular_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 1.0) -> dict[str, Any]:
    """Keyword arguments for one seeded call: ``ltx2_call``'s prompt embeddings and mask, 17 frames of
    512x512 at 25 fps (3 latent frames of 16x16, 17 audio frames), noise and re-noising drawn from the
    generator, over Echo's DMD sigmas (8 steps) or, for other ``steps``, ``steps`` linear ones. Returns
    unpacked video latents (1, 4, 3, 16, 16). ``guidance_scale`` is ignored (no guidance)."""
    from diffusers.modular_pipelines.echo.denoise import DEFAULT_ECHO_SIGMAS

    kwargs = ltx2_call(pipe, steps, seed)
    sigmas = DEFAULT_ECHO_SIGMAS if steps == len(DEFAULT_ECHO_SIGMAS) - 1 else torch.linspace(1, 0, steps + 1)
    return dict(prompt_embeds=kwargs["prompt_embeds"], prompt_attention_mask=kwargs["prompt_attention_mask"],
                num_frames=17, height=512, width=512, frame_rate=25.0, sigmas=[float(s) for s in sigmas],
                generator=torch.Generator().manual_seed(seed), output="latents")


# ------------------------------------------------------------------------------------------ Cosmos 3


def _cosmos3_modular(pipeline_class: str, blocks: Any, seed: int, scheduler: Any = None) -> Any:
    """A ``pipeline_class`` of ``blocks`` headed by ``Cosmos3TextEncoderStep`` (it tokenizes the prompt,
    with the tiny word-level tokenizer) with the tiny Cosmos 3 Omni transformer of
    ``tiny_cosmos3_pipeline``, ``scheduler`` (default: its UniPC one), and no safety checker."""
    import diffusers
    from diffusers.modular_pipelines.cosmos.encoders import Cosmos3TextEncoderStep

    from tests.pipelines_more import tiny_cosmos3_pipeline

    classic = tiny_cosmos3_pipeline(seed)
    blocks.sub_blocks.insert("text_encoder", Cosmos3TextEncoderStep(), 0)
    with _quiet():
        pipe = getattr(diffusers, pipeline_class)(blocks=blocks)
        pipe.update_components(transformer=classic.transformer, text_tokenizer=classic.text_tokenizer,
                               scheduler=scheduler or classic.scheduler, enable_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_cosmos3_modular_pipeline(seed: int = 0) -> Any:
    """A ``Cosmos3OmniModularPipeline`` of ``Cosmos3VisionCoreDenoiseStep`` (text-to-video) with the
    transformer and UniPC scheduler of ``tiny_cosmos3_pipeline``. No guider: the call's
    ``guidance_scale`` (not 1) makes the loop call the transformer twice a step, unbatched, in
    ``cache_context("cond")`` then ``("uncond")``, as ``Cosmos3OmniPipeline``. Without a VAE it assumes
    16x spatial, 4x temporal compression."""
    from diffusers.modular_pipelines.cosmos.modular_blocks_cosmos3 import Cosmos3VisionCoreDenoiseStep

    return _cosmos3_modular("Cosmos3OmniModularPipeline", Cosmos3VisionCoreDenoiseStep(), seed)


def tiny_cosmos3_distilled_modular_pipeline(seed: int = 0) -> Any:
    """A ``Cosmos3DistilledModularPipeline`` of ``Cosmos3DistilledVisionCoreDenoiseStep`` with the
    transformer of ``tiny_cosmos3_pipeline`` and a stochastic flow-matching Euler scheduler (the
    schedule is the pipeline's ``distilled_sigmas`` config, set by the call). Guidance is baked in:
    per step the loop calls the transformer once, in ``cache_context("cond")``, then re-noises."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.modular_pipelines.cosmos.modular_blocks_cosmos3_distilled import (
        Cosmos3DistilledVisionCoreDenoiseStep)

    return _cosmos3_modular("Cosmos3DistilledModularPipeline", Cosmos3DistilledVisionCoreDenoiseStep(), seed,
                            FlowMatchEulerDiscreteScheduler(stochastic_sampling=True))


def cosmos3_modular_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """Keyword arguments for one seeded call: ``cosmos3_call``'s prompt and ``guidance_scale`` (a call
    input: 1 turns CFG off), 9 frames of 64x64 (3 latent frames of 4x4, as ``cosmos3_call``'s 32x32 at
    8x), returning latents (1, 4, 3, 4, 4): bitwise those of ``cosmos3_call`` on ``tiny_cosmos3_pipeline``."""
    from tests.pipelines_more import cosmos3_call

    kwargs = cosmos3_call(pipe, steps, seed, guidance_scale=guidance_scale)
    del kwargs["output_type"]
    kwargs.update(height=64, width=64, output="latents")
    return kwargs


def cosmos3_distilled_modular_call(pipe: Any, steps: int, seed: int = 0,
                                   guidance_scale: float = 1.0) -> dict[str, Any]:
    """``cosmos3_modular_call`` over ``steps`` linear sigmas from 1 (set as the pipeline's
    ``distilled_sigmas``), without a negative prompt; ``guidance_scale`` must be 1."""
    if list(pipe.config.distilled_sigmas or ()) != torch.linspace(1, 0, steps + 1)[:-1].tolist():
        with _quiet():
            pipe.update_components(distilled_sigmas=torch.linspace(1, 0, steps + 1)[:-1].tolist())
    kwargs = cosmos3_modular_call(pipe, steps, seed, guidance_scale)
    del kwargs["negative_prompt"]
    return kwargs


BUILDERS = {"ltx2": tiny_ltx2_modular_pipeline, "ltx25": tiny_ltx25_modular_pipeline,
            "echo": tiny_echo_modular_pipeline, "cosmos3": tiny_cosmos3_modular_pipeline,
            "cosmos3_distilled": tiny_cosmos3_distilled_modular_pipeline}
CALLS = {"ltx2": ltx2_modular_call, "ltx25": ltx2_modular_call, "echo": echo_modular_call,
         "cosmos3": cosmos3_modular_call, "cosmos3_distilled": cosmos3_distilled_modular_call}
