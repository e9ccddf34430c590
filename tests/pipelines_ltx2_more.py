"""More tiny LTX pipelines built offline from seeded random parts: the LTX-2 condition, HDR and
in-context (IC-LoRA) pipelines and the two DFR pipelines (keyframe slots, no CFG) on the tiny LTX-2
parts of tests/pipelines_ltx2.py, and LTX-Video's long multi-prompt image-to-video pipeline (one
denoising loop per overlapping temporal window) on the tiny LTX parts of tests/pipelines_i2v.py.

No LoRA is loaded: the HDR and in-context pipelines append the reference tokens and run with the base
transformer (a LoRA only changes its weights; peft is not installed here). Every call returns latents."""

from __future__ import annotations

import functools
from typing import Any

import torch

from tests.pipelines import _finish
from tests.pipelines_ltx2 import _parts, ltx2_call

#: Pixel size of every LTX-2 call here: the tiny video VAE gives 16x16 latents (256 tokens a frame).
SIZE = 32


def _pixels(frames: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """A seeded video (F, 3, SIZE, SIZE) in [0, scale). The tiny VAE's encoder compresses space only
    (its decoder and the pipelines assume 2x in time too): F frames encode to F latent frames."""
    return scale * torch.rand(frames, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2000 + seed))


def _ltx2_text(pipe: Any, steps: int, seed: int, **overrides: Any) -> dict[str, Any]:
    """ltx2_call's prompt embeddings, guidance and size (5 frames of 32x32)."""
    kwargs = ltx2_call(pipe, steps, seed)
    return {**kwargs, **overrides}


# -- LTX2ConditionPipeline ------------------------------------------------------------------------


def tiny_ltx2_condition_pipeline(seed: int = 0) -> Any:
    """An ``LTX2ConditionPipeline`` on the tiny LTX-2 parts."""
    from diffusers import LTX2ConditionPipeline

    return _finish(LTX2ConditionPipeline(**_parts(seed)))


def ltx2_condition_call(pipe: Any, steps: int, seed: int = 0, index: int = 2, condition_frames: int = 1,
                        **guidance: Any) -> dict[str, Any]:
    """ltx2_call's call (every guidance pass on) conditioned on a ``condition_frames``-frame video at latent
    frame ``index`` (pixels in [0, 255], no H.264 re-compression). Index 0 overwrites the first latent
    frame's tokens; a later index appends the condition's tokens (256 a latent frame) after the video's,
    with their own coordinates and timestep ``t * (1 - strength)``."""
    from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition

    frames = _pixels(condition_frames, seed, 255.0)
    condition = LTX2VideoCondition(frames=frames[0] if condition_frames == 1 else frames, index=index, crf=0)
    return _ltx2_text(pipe, steps, seed, conditions=[condition], **guidance)


# -- LTX2HDRPipeline and LTX2InContextPipeline ------------------------------------------------------


def tiny_ltx2_hdr_pipeline(seed: int = 0) -> Any:
    """An ``LTX2HDRPipeline`` on the tiny LTX-2 parts, without its HDR IC-LoRA."""
    from diffusers import LTX2HDRPipeline

    return _finish(LTX2HDRPipeline(**_parts(seed)))


def ltx2_hdr_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 3.0, stg_scale: float = 1.0,
                  modality_scale: float = 3.0) -> dict[str, Any]:
    """5 frames of 32x32 with a 3-frame reference video (3 latent frames: 768 tokens appended after the
    video's 768, held clean: timestep 0). The pipeline is video-only: no audio guidance scales, the audio latents stay
    the initial noise at every step (the audio scheduler steps a zero velocity). Guidance on by default
    (its own defaults are the distilled model's: no CFG, STG or modality pass)."""
    from diffusers.pipelines.ltx2.pipeline_ltx2_hdr_lora import LTX2HDRReferenceCondition

    reference = LTX2HDRReferenceCondition(frames=_pixels(3, seed))
    kwargs = _ltx2_text(pipe, steps, seed, guidance_scale=guidance_scale, stg_scale=stg_scale,
                        modality_scale=modality_scale, reference_conditions=[reference])
    for key in ("audio_guidance_scale", "audio_stg_scale", "audio_modality_scale", "audio_guidance_rescale"):
        del kwargs[key]
    return kwargs


def tiny_ltx2_in_context_pipeline(seed: int = 0) -> Any:
    """An ``LTX2InContextPipeline`` on the tiny LTX-2 parts, without an IC-LoRA."""
    from diffusers import LTX2InContextPipeline

    return _finish(LTX2InContextPipeline(**_parts(seed)))


def ltx2_in_context_call(pipe: Any, steps: int, seed: int = 0, attention_strength: float = 0.5,
                         **guidance: Any) -> dict[str, Any]:
    """ltx2_call's call with a 3-frame reference video at half resolution (192 tokens appended after the
    video's 768, coordinates scaled x2, held clean) that the video attends to at ``attention_strength``:
    below 1 every call also takes ``video_self_attention_mask`` (B, 960, 960), the mask of batch 1
    expanded to the call's batch."""
    from diffusers.pipelines.ltx2.pipeline_ltx2_ic_lora import LTX2ReferenceCondition

    reference = LTX2ReferenceCondition(frames=_pixels(3, seed))
    return _ltx2_text(pipe, steps, seed, reference_conditions=[reference], reference_downscale_factor=2,
                      conditioning_attention_strength=attention_strength, **guidance)


# -- LTX2DFRPipeline and LTX2DFRTemporalRefinePipeline ------------------------------------------------


def _dfr_parts(seed: int) -> dict[str, Any]:
    """The tiny LTX-2 parts with a transformer that has the keyframe marker DFR needs
    (``use_keyframes_abs_pos_embedding``: a learned vector added to the tokens of single-pixel-frame
    latents), seeded nonzero so the marker changes the output, and RoPE scale factors of the tiny VAE's
    compression (2, 2, 2; the parts' transformer keeps LTX-2's (8, 32, 32)), so the positions the
    pipeline gives appended keyframes and slots (by the VAE's ratios) and those of the video tokens (by
    the transformer's) agree, as the epilogue's tiles need. The other weights are the parts'."""
    from diffusers import LTX2VideoTransformer3DModel

    parts = _parts(seed)
    base = parts["transformer"]
    config = {k: v for k, v in base.config.items() if not k.startswith("_")}
    transformer = LTX2VideoTransformer3DModel(**{**config, "use_keyframes_abs_pos_embedding": True,
                                                       "vae_scale_factors": (2, 2, 2)})
    missing, unexpected = transformer.load_state_dict(base.state_dict(), strict=False)
    assert missing == ["keyframes_abs_pos_embedding"] and not unexpected, (missing, unexpected)
    with torch.no_grad():
        transformer.keyframes_abs_pos_embedding.copy_(
            0.5 * torch.randn(transformer.keyframes_abs_pos_embedding.shape,
                              generator=torch.Generator().manual_seed(4000 + seed)))
    parts["transformer"] = transformer.eval()
    return parts


def tiny_ltx2_dfr_pipeline(seed: int = 0) -> Any:
    """An ``LTX2DFRPipeline`` (one DFR pass: video plus generated keyframe slots) on the tiny LTX-2 parts."""
    from diffusers import LTX2DFRPipeline

    return _finish(LTX2DFRPipeline(**_dfr_parts(seed)))


def tiny_ltx2_dfr_refine_pipeline(seed: int = 0) -> Any:
    """An ``LTX2DFRTemporalRefinePipeline`` (one temporal refine round) on the tiny LTX-2 parts, with the
    ancestral scheduler it requires (eta 0.5) and a 1-block temporal latent upsampler (F -> 2F - 1)."""
    from diffusers import LTX2DFRTemporalRefinePipeline, LTXEulerAncestralRFScheduler
    from diffusers.pipelines.ltx2 import LTX2LatentUpsamplerModel
    from diffusers.pipelines.ltx2.utils import TEMPORAL_ANCESTRAL_ETA

    parts = _dfr_parts(seed)
    torch.manual_seed(seed)
    upsampler = LTX2LatentUpsamplerModel(in_channels=4, mid_channels=32, num_blocks_per_stage=1, dims=3,
                                         spatial_upsample=False, temporal_upsample=True).eval()
    parts["scheduler"] = LTXEulerAncestralRFScheduler(eta=TEMPORAL_ANCESTRAL_ETA)
    return _finish(LTX2DFRTemporalRefinePipeline(**parts, temporal_latent_upsampler=upsampler))


#: Pixel frames of the DFR stage-1 call: the tiny VAE's 2x temporal compression gives 7 latent frames and
#: keyframe segments of 6 pixel frames, so slots at pixel frames 6 and 12 (a canvas of 13, no padding).
DFR_FRAMES = 13


def _dfr_text(pipe: Any, seed: int) -> dict[str, Any]:
    """A prompt embedding (no negative one: DFR has no CFG) and its mask, as ltx2_call's."""
    kwargs = ltx2_call(pipe, 1, seed)
    return dict(prompt_embeds=kwargs["prompt_embeds"], prompt_attention_mask=kwargs["prompt_attention_mask"])


def _sigmas(steps: int, start: float = 1.0, end: float = 0.42) -> list[float]:
    """A distilled-like schedule of ``steps`` sigmas, without the terminal 0 (DFR appends it)."""
    return torch.linspace(start, end, steps).tolist()


@functools.lru_cache(maxsize=4)
def _dfr_stage1(seed: int) -> Any:
    """The output of a 4-step DFR stage-1 call (latent, return_dict) on a pipeline of its own (the same
    seeded weights, other module instances, so nothing hooked on a caller's pipeline sees it)."""
    pipe = tiny_ltx2_dfr_pipeline(seed)
    with torch.no_grad():
        return pipe(**ltx2_dfr_call(pipe, 4, seed))


def ltx2_dfr_call(pipe: Any, steps: int, seed: int = 0) -> dict[str, Any]:
    """Stage 1 of the DFR recipe without CFG: one transformer call a step (no ``cache_context``, no
    ``num_frames`` / ``height`` / ``width``: positions come as ``video_coords``, per-token timesteps,
    ``video_keyframes_mask``), 13 frames of 32x32 from noise: 7 latent frames plus 2 generated keyframe
    slots (256 tokens each) appended, ``steps`` sigmas from 1.0 to 0.42."""
    return dict(**_dfr_text(pipe, seed), height=SIZE, width=SIZE, num_frames=DFR_FRAMES, frame_rate=24.0,
                sigmas=_sigmas(steps), output_type="latent", generator=torch.Generator().manual_seed(seed))


def ltx2_dfr_refine_call(pipe: Any, steps: int, seed: int = 0) -> dict[str, Any]:
    """Temporal refine round 1 of a stage-1 output (``_dfr_stage1``: 13 frames, 7 latent frames, keyframes
    at pixel frames 6 and 12): the upsampler doubles it to 13 latent frames (25 pixel frames), split into 2
    temporal tiles at the keyframe seams, each denoised by a loop of its own over ``steps`` sigmas from
    0.975 to 0.42 (the ancestral scheduler: the loop walks timesteps[:-1] of sigmas + [0]), with the seam
    keyframes it holds appended (strength 0.95), the mid-segment slots it invents and the stage-1 audio
    frozen (sigma 0), resampled to its window. Tile 1: latent frames 0-6, a seam, a slot (2304 tokens);
    tile 2: its run-up of a segment and a seam reaches back to frame 0 at these sizes, so all 13 frames,
    2 seams, 2 slots (4352 tokens). Two loops a call, one transformer call a step."""
    stage1 = _dfr_stage1(seed)
    return dict(**_dfr_text(pipe, seed), latents=stage1.frames.clone(), keyframes_latents=stage1.keyframes.clone(),
                keyframe_positions=list(stage1.keyframe_positions), audio_latents=stage1.audio.clone(),
                height=SIZE, width=SIZE, num_frames=DFR_FRAMES, frame_rate=24.0, round_index=1,
                sigmas=_sigmas(steps, 0.975), output_type="latent", generator=torch.Generator().manual_seed(seed))


# -- LTXI2VLongMultiPromptPipeline --------------------------------------------------------------------


def tiny_ltx_long_pipeline(seed: int = 0) -> Any:
    """An ``LTXI2VLongMultiPromptPipeline`` (LTX-Video, temporal sliding windows): the tiny LTX transformer
    and causal VAE of tests/pipelines_i2v.py (4x temporal, 4x spatial, 8 latent channels), the ancestral
    scheduler it is meant for, and, since it encodes each window's prompt itself (it takes no embeddings),
    the word-level tokenizer of tests/pipelines_more.py and a 1-layer T5 encoder of 32 dims."""
    from transformers import T5Config, T5EncoderModel

    from diffusers import LTXEulerAncestralRFScheduler, LTXI2VLongMultiPromptPipeline
    from tests.pipelines_i2v import tiny_ltx_i2v_pipeline
    from tests.pipelines_more import _tokenizer

    parts = tiny_ltx_i2v_pipeline(seed).components
    tokenizer = _tokenizer()
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=32, num_layers=1,
                                           num_heads=2, pad_token_id=tokenizer.pad_token_id)).eval()
    return _finish(LTXI2VLongMultiPromptPipeline(
        scheduler=LTXEulerAncestralRFScheduler(), vae=parts["vae"], transformer=parts["transformer"],
        text_encoder=text_encoder, tokenizer=tokenizer))


def ltx_long_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 3.0) -> dict[str, Any]:
    """25 frames of 32x32 (7 latent frames of 8x8) from an image, in 2 windows of 5 latent frames that
    overlap by 3 (prompt "a cat | a dog": one each). Each window is a denoising loop of its own (the
    scheduler is reset per window) over the schedule's timesteps[:-1]: ``steps - 1`` transformer calls,
    the pipeline skips the last timestep. One batched [uncond, cond] call a step under
    ``cache_context("cond_uncond")``, timestep per token (B, L, 1), ``num_frames=height=width=1`` (the
    grid is in ``video_coords`` only). Window 1's tokens: its 5 frames plus the image's latent frame
    appended (384); window 2's: 5 frames plus window 1's 3-frame tail and the image frame (576). Returns
    the fused latents (1, 8, 7, 8, 8)."""
    return dict(prompt="a cat | a dog", negative_prompt="", height=SIZE, width=SIZE, num_frames=25,
                frame_rate=25, guidance_scale=guidance_scale, num_inference_steps=steps, seed=seed,
                generator=torch.Generator().manual_seed(seed),
                cond_image=torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(2000 + seed)),
                temporal_tile_size=20, temporal_overlap=12, max_sequence_length=8, output_type="latent")


BUILDERS = {"ltx2_condition": tiny_ltx2_condition_pipeline, "ltx2_hdr": tiny_ltx2_hdr_pipeline,
            "ltx2_in_context": tiny_ltx2_in_context_pipeline, "ltx2_dfr": tiny_ltx2_dfr_pipeline,
            "ltx2_dfr_refine": tiny_ltx2_dfr_refine_pipeline,
            "ltx_long": tiny_ltx_long_pipeline}
CALLS = {"ltx2_condition": ltx2_condition_call, "ltx2_hdr": ltx2_hdr_call, "ltx2_in_context": ltx2_in_context_call,
         "ltx2_dfr": ltx2_dfr_call, "ltx2_dfr_refine": ltx2_dfr_refine_call,
         "ltx_long": ltx_long_call}
