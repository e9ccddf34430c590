"""Wan Animate 2 from tiny random parts: the whole ``WanAnimate2ModularPipeline`` (diffusers ships Wan
Animate 2 only as modular blocks), built offline with a word-level tokenizer, a 1-layer UMT5, a CLIP
vision tower and the tiny Wan VAE; and one segment of its denoising written out by hand on a bare
``WanAnimate2Transformer3DModel``, the way ``WanAnimate2DenoiseStep`` drives it for the first segment,
with seeded random tensors in place of the encoders' outputs:

1. ``ref_extract``: one ``kv_cache_mode="extract"`` pass over the driving-video latents (the reference
   prompt's text, the driving video's CLIP features) that fills a fresh ``WanAnimate2KVCache``;
2. ``denoise_inner``: per step, the cond branch then the uncond branch (split CFG, one call each, as the
   ``ClassifierFreeGuidance`` guider orders them), ``kv_cache_mode="cached"``, the uncond call with the
   negative text and ``is_uncondtion=True``; then the guider's combination and a scheduler step.

Inputs are lists of one unbatched tensor per sample, exactly as the pipeline passes them.
"""

from __future__ import annotations

import math
from unittest import mock

import torch

# The smallest geometry the pipeline's arithmetic accepts: a 5-frame segment (a multiple of 4, plus 1) gives
# 2 driving-video latent frames and 3 generation latent frames (the reference image's slot first); 32x32
# pixels give 4x4 latents, 2x2 tokens a frame after the 1x2x2 patch.
LATENT_CHANNELS = 4
SEGMENT_FRAME_LENGTH = 5
HEIGHT = WIDTH = 32
VAE_SPATIAL, VAE_TEMPORAL = 8, 4
TEXT_TOKENS, TEXT_DIM = 8, 32
CLIP_TOKENS, CLIP_DIM = 4, 1280  # the transformer's image projection is hard-wired to CLIP's 1280 dims

_SIZES = dict(
    patch_size=(1, 2, 2), text_len=TEXT_TOKENS, in_dim=2 * LATENT_CHANNELS + 4, dim=32, ffn_dim=64, freq_dim=32,
    text_dim=TEXT_DIM, out_dim=LATENT_CHANNELS, num_heads=2, num_layers=2, cross_attn_norm=True, use_img_emb=True,
)


def tiny_wan_animate2_transformer(seed: int = 0):
    """A ``WanAnimate2Transformer3DModel`` of 2 blocks, 2 heads x 16 dims (ffn 64), 4 latent channels
    (input: latents + 4 mask channels + 4 conditioning latent channels = 12), 8 text tokens of 32 dims,
    the CLIP image branch on (1280 -> 32), default reference RoPE offsets (1, 0, -1); ``.eval()``."""
    from diffusers import WanAnimate2Transformer3DModel

    torch.manual_seed(seed)
    return WanAnimate2Transformer3DModel(**_SIZES).eval()


def _scheduler():
    """The official sampler (flow DPM-Solver++, shift 5) as diffusers has it. UniPC cannot be it: the
    pipeline passes ``generator=`` to ``scheduler.step``, which ``UniPCMultistepScheduler.step`` lacks."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)


def _prebuild_block_mask(model) -> None:
    """Put the model's own in-context ``BlockMask`` for this geometry into ``model.block_masks``, built
    without ``torch.compile`` (same mask, bitwise; ``create_mask`` would otherwise compile it with inductor
    on the first cached call, seconds of work and a C++ compiler). A no-op when already there."""
    import diffusers.models.transformers.transformer_wan_animate_2 as module

    frames = SEGMENT_FRAME_LENGTH // VAE_TEMPORAL + 1  # as the model's forward derives them
    area = HEIGHT * WIDTH // 256
    if (frames, area) in model.block_masks:
        return
    build = module.create_block_mask
    with mock.patch.object(module, "create_block_mask", lambda *a, **k: build(*a, **{**k, "_compile": False})):
        model.block_masks[(frames, area)] = model.create_mask(frames, area, model.patch_embedding.weight.device)


def _mask(frames: int, height: int, width: int, ones: bool) -> torch.Tensor:
    """The pipeline's 4-channel i2v mask (``get_i2v_mask``) in the two cases one first segment uses: all
    ones (the reference image; the driving video, masked over its whole length) or all zeros (no previous
    segment's frames)."""
    return (torch.ones if ones else torch.zeros)(4, frames, height, width)


def wan_animate2_loop(model, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> torch.Tensor:
    """One segment of ``WanAnimate2DenoiseStep``, by hand: returns the final latents (1, 4, 3, 4, 4).

    As the pipeline: fresh noise (C, 3, 4, 4) from a generator seeded ``seed``; ``set_timesteps(steps)``;
    a fresh ``WanAnimate2KVCache``; one extract call (timestep ``[timesteps[0]]``, which the model replaces
    by 1); then per step ``timestep = stack([t])`` and the cond call, the uncond call (negative text,
    ``is_uncondtion=True``; only with CFG on, i.e. ``guidance_scale`` not 1), each reading
    ``.sample[0]`` (C, 3, 4, 4); ``uncond + scale * (cond - uncond)``; ``scheduler.step`` on the
    batch-of-one. Conditions are seeded (``1000 + seed``) stand-ins for the encoders' outputs."""
    from diffusers.models.transformers.transformer_wan_animate_2 import WanAnimate2KVCache

    dtype = model.dtype
    latent_h, latent_w = HEIGHT // VAE_SPATIAL, WIDTH // VAE_SPATIAL
    ref_frames = (SEGMENT_FRAME_LENGTH - 1) // VAE_TEMPORAL + 1  # latent frames of the driving segment
    grid_sizes_ref = torch.tensor([[ref_frames, latent_h // 2, latent_w // 2]], dtype=torch.long)
    max_seq_len = (ref_frames + 1) * (latent_h // 2) * (latent_w // 2)  # + the reference image's slot
    max_seq_len_ref = ref_frames * latent_h * latent_w // 4

    g = torch.Generator().manual_seed(1000 + seed)
    prompt_embeds = torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=g)
    negative_prompt_embeds = 0.1 * torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=g)
    prompt_ref_embeds = torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=g)
    encoder_hidden_states_image = torch.randn(1, CLIP_TOKENS, CLIP_DIM, generator=g)  # reference image's CLIP
    condition_clip_context = torch.randn(1, CLIP_TOKENS, CLIP_DIM, generator=g)  # driving video's first frame
    image_latents = torch.randn(LATENT_CHANNELS, 1, latent_h, latent_w, generator=g)
    prev_latents = torch.randn(LATENT_CHANNELS, ref_frames, latent_h, latent_w, generator=g)  # VAE(zeros)
    driving_video_latents = torch.randn(1, LATENT_CHANNELS, ref_frames, latent_h, latent_w, generator=g)
    # image VAE encoder step; prev-frames step (first segment: no carried frames); segment VAE encoder step
    reference_image_latents = torch.cat([_mask(1, latent_h, latent_w, True), image_latents])
    reference_latents = torch.cat(
        [reference_image_latents, torch.cat([_mask(ref_frames, latent_h, latent_w, False), prev_latents])], dim=1)
    driving_video_condition = torch.cat([_mask(ref_frames, latent_h, latent_w, True), driving_video_latents[0]])

    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(LATENT_CHANNELS, ref_frames + 1, latent_h, latent_w, generator=generator)
    scheduler = _scheduler()
    scheduler.set_timesteps(steps)
    kv_cache = WanAnimate2KVCache(model.config.num_layers)
    cfg = not math.isclose(guidance_scale, 1.0)
    branches = [(prompt_embeds, False)] + ([(negative_prompt_embeds, True)] if cfg else [])
    _prebuild_block_mask(model)

    with torch.no_grad():
        model(
            [driving_video_latents[0].to(dtype)],
            timestep=torch.tensor([scheduler.timesteps[0].item()], dtype=dtype),
            encoder_hidden_states=[prompt_ref_embeds[0].to(dtype)],
            encoder_hidden_states_image=condition_clip_context.to(dtype),
            condition_latents=[driving_video_condition.to(dtype)],
            kv_cache=kv_cache,
            kv_cache_mode="extract",
            seq_len=max_seq_len_ref,
            offset_grid_sizes=grid_sizes_ref,
        )
        for t in scheduler.timesteps:
            timestep = torch.stack([t])
            preds = []
            for text, uncond in branches:
                preds.append(model(
                    [latents.to(dtype)],
                    timestep=timestep,
                    encoder_hidden_states=[text[0].to(dtype)],
                    condition_latents=[reference_latents.to(dtype)],
                    kv_cache=kv_cache,
                    kv_cache_mode="cached",
                    seq_len=max_seq_len,
                    reference_grid_sizes=grid_sizes_ref,
                    origin_len=SEGMENT_FRAME_LENGTH,
                    origin_area=[HEIGHT, WIDTH],
                    is_uncondtion=uncond,
                    encoder_hidden_states_image=encoder_hidden_states_image.to(dtype),
                ).sample[0])
            if cfg:
                pred_cond, pred_uncond = preds
                noise_pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
            else:
                noise_pred = preds[0]
            latents = scheduler.step(noise_pred.unsqueeze(0), t, latents.unsqueeze(0), return_dict=False,
                                     generator=generator)[0].squeeze(0)
        kv_cache.clear()
    return latents.unsqueeze(0)


def tiny_wan_animate2_pipeline(seed: int = 0, distilled: bool = False):
    """The whole ``WanAnimate2ModularPipeline`` (``WanAnimate2Blocks``) from tiny parts: the transformer
    above, the flow DPM-Solver, a CFG guider at 5, a word-level tokenizer and a 1-layer UMT5 of width 32,
    a 2-layer CLIP vision tower of width 1280 (patch 112), and the tiny Wan VAE. ``distilled``: the
    ``WanAnimate2DistilledModularPipeline`` (the same blocks and model, its guider at 1: no CFG)."""
    from diffusers import WanAnimate2Blocks, WanAnimate2DistilledBlocks
    from diffusers.guiders import ClassifierFreeGuidance
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPVisionConfig, CLIPVisionModel, PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    from tests.pipelines import tiny_wan_pipeline
    from tests.pipelines_modular import _quiet

    words = "<pad> </s> [UNK] a cat dances static background .".split()
    vocab = {w: i for i, w in enumerate(words)}
    tokens = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokens.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokens, unk_token="[UNK]", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(vocab), d_model=TEXT_DIM, d_kv=16, d_ff=64, num_layers=1,
                                               num_heads=2)).eval()
    image_encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=CLIP_DIM, intermediate_size=64, num_hidden_layers=2,
                                                     num_attention_heads=2, image_size=224, patch_size=112)).eval()
    with _quiet():
        pipe = (WanAnimate2DistilledBlocks if distilled else WanAnimate2Blocks)().init_pipeline()
        pipe.update_components(transformer=tiny_wan_animate2_transformer(seed), vae=tiny_wan_pipeline(seed).vae,
                               scheduler=_scheduler(), guider=ClassifierFreeGuidance(guidance_scale=1.0 if distilled else 5.0),
                               text_encoder=text_encoder, tokenizer=tokenizer, image_encoder=image_encoder)
    _prebuild_block_mask(pipe.transformer)  # (the segment loop's progress bar is a bare tqdm: it always shows)
    return pipe


def wan_animate2_call(pipe, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict:
    """One seeded call: a 32x32 reference image animated along a 5-frame driving video (one segment),
    returning the decoded video ``(1, 5, 3, 32, 32)``."""
    import numpy as np
    import PIL.Image

    from tests.pipelines_modular import _set_guidance

    _set_guidance(pipe, guidance_scale)
    rng = np.random.default_rng(seed)
    image = PIL.Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    video = [PIL.Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8))
             for _ in range(SEGMENT_FRAME_LENGTH)]
    return dict(prompt="a cat dances", negative_prompt="static background", image=image, driving_video=video,
                height=HEIGHT, width=WIDTH, segment_frame_length=SEGMENT_FRAME_LENGTH, num_inference_steps=steps,
                max_sequence_length=TEXT_TOKENS, generator=torch.Generator().manual_seed(seed), output_type="pt",
                output="videos")
