"""Tiny MiniMax-H3 and SANA-WM stage-2 pipelines, built offline from seeded random components.

- ``minimax_h3``: a ``MiniMaxH3ModularPipeline`` of the ``t2va`` core denoise blocks (no text
  encoder: prompt embeddings are passed in; no VAEs: the call returns the video latents). The
  checkpoint is guidance-distilled: one transformer call per step on one packed sequence
  ``[text | audio | video]`` rows, no guider, no ``cache_context``.
- ``sana_wm_refiner``: a ``SanaWMLTX2Refiner`` (SANA-WM stage 2) on the tiny LTX-2 transformer's
  weights, refining seeded random "stage-1" latents chunk by chunk over a sliding key/value cache:
  one denoising loop per chunk, one call per step (``kv_cache_mode="inject"``), no CFG, plus the
  cache-filling calls of ``_capture_block_kv`` (no steps). The pipeline reads prompt text, so it
  carries the word-level tokenizer of ``tests/pipelines_more.py`` and a tiny Gemma-3 encoder.

Each family has a builder (``BUILDERS``) and the keyword arguments of one seeded call returning
latents (``CALLS``)."""

from __future__ import annotations

from typing import Any

import torch

from tests.pipelines import _finish, _noise, _text
from tests.pipelines_ltx2 import TEXT_DIM, TEXT_LAYERS, _parts
from tests.pipelines_modular import _quiet
from tests.pipelines_more import _tokenizer

# ------------------------------------------------------------------------------------------ MiniMax-H3

#: Text rows of a MiniMax-H3 call (all tagged text, modality 1) and their width.
MINIMAX_TEXT_TOKENS, MINIMAX_TEXT_DIM = 8, 32


def tiny_minimax_h3_pipeline(seed: int = 0) -> Any:
    """A ``MiniMaxH3ModularPipeline`` of the ``MiniMaxH3CoreDenoiseStep`` blocks (t2va: layout, noise,
    timesteps, denoise loop, unpack) with a 2-block transformer of width 32 (2 heads x 16, 1 text-refiner
    block, patch 1x2x2, rotary over 2 x 3 x 2 of each head's 16 channels), the released latent widths
    (24 video, 32 audio channels: without VAEs the blocks assume them, 16x spatial compression and
    17-frame VAE chunks) and the two ``MiniMaxH3Scheduler`` s: shift 12 (video) and 3 (audio)."""
    from diffusers import MiniMaxH3Scheduler, MiniMaxH3Transformer3DModel
    from diffusers.modular_pipelines.minimax_h3.modular_blocks_minimax_h3 import MiniMaxH3CoreDenoiseStep

    torch.manual_seed(seed)
    transformer = MiniMaxH3Transformer3DModel(
        num_attention_heads=2, attention_head_dim=16, hidden_size=32, num_layers=2, num_refiner_layers=1, ffn_dim=64,
        in_channels=24, audio_in_channels=32, patch_size=(1, 2, 2), text_dim=MINIMAX_TEXT_DIM, freq_dim=32,
        time_embed_hidden_dim=32, time_embed_dim=32, rope_freq_dim=2,
    ).eval()
    with _quiet():
        pipe = MiniMaxH3CoreDenoiseStep().init_pipeline()
        pipe.update_components(transformer=transformer, scheduler=MiniMaxH3Scheduler(shift=12.0),
                               audio_scheduler=MiniMaxH3Scheduler(shift=3.0))
    return _finish(pipe)


def minimax_h3_call(pipe: Any, steps: int, seed: int = 0) -> dict[str, Any]:
    """One seeded t2va call of 124 frames (the shortest the blocks accept: 5 s at 24 fps, 17 n + 5) of
    64x64, returning the video latents ``(1, 24, 37, 4, 4)``. The packed sequence has 8 text rows, 414
    audio rows (2 channels x 207 latents) and 148 video rows (37 frames x 2 x 2 patches). ``steps`` is
    the scheduler's grid size, terminal 0 included: the loop makes ``steps - 1`` transformer calls."""
    generator = torch.Generator().manual_seed(1000 + seed)
    return dict(prompt_embeds=_text(generator, MINIMAX_TEXT_TOKENS, MINIMAX_TEXT_DIM),
                text_token_tags=torch.full((MINIMAX_TEXT_TOKENS,), pipe.text_tag, dtype=torch.long),
                height=64, width=64, num_frames=124, num_inference_steps=steps,
                generator=torch.Generator().manual_seed(seed), output="latents")


# --------------------------------------------------------------------------------------- SANA-WM stage 2

#: Stage-1 latents a refiner call refines: 4 channels, 7 latent frames of 8x8.
REFINER_LATENT = (1, 4, 7, 8, 8)


def _gemma3_encoder(vocab_size: int) -> Any:
    """A ``Gemma3ForConditionalGeneration`` of ``TEXT_LAYERS - 1`` text layers of ``TEXT_DIM`` (so its
    hidden states stack to the tiny LTX-2 connectors' input) and a 1-layer SigLIP tower the refiner never runs."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    config = Gemma3Config(
        text_config=dict(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=32,
                         num_hidden_layers=TEXT_LAYERS - 1, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         max_position_embeddings=64, sliding_window=8),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4,
    )
    return Gemma3ForConditionalGeneration(config).eval()


def tiny_sana_wm_refiner(seed: int = 0) -> Any:
    """A ``SanaWMLTX2Refiner``: a ``SanaWMLTX2RefinerTransformer3DModel`` of the tiny LTX-2 transformer's
    config and weights (``tests/pipelines_ltx2.py``: 2 blocks, 2 heads x 8, 4 channels, split RoPE;
    without its perturbed attention), the tiny LTX-2 text connectors, the word-level tokenizer of
    ``tests/pipelines_more.py`` (prompts padded to 8 tokens), a tiny Gemma-3 encoder, the flow-matching
    Euler scheduler with shift 1 (the refiner's sigmas pass through) and no VAE (calls return latents)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaWMLTX2Refiner, SanaWMLTX2RefinerTransformer3DModel

    parts = _parts(seed)
    ltx2 = parts["transformer"]
    transformer = SanaWMLTX2RefinerTransformer3DModel.from_config(ltx2.config, perturbed_attn=False).eval()
    transformer.load_state_dict(ltx2.state_dict())
    tokenizer = _tokenizer()
    torch.manual_seed(seed)
    return _finish(SanaWMLTX2Refiner(transformer=transformer, connectors=parts["connectors"], tokenizer=tokenizer,
                                     text_encoder=_gemma3_encoder(len(tokenizer)),
                                     scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=None,
                                     text_max_sequence_length=8))


def sana_wm_refiner_call(pipe: Any, steps: int, seed: int = 0) -> dict[str, Any]:
    """Refine seeded random stage-1 latents ``(1, 4, 7, 8, 8)``: frame 0 is the attention sink (kept as
    is), frames 1-6 are 3 chunks of 2 (``block_size=2``), each one denoising loop of ``steps`` Euler steps
    from sigma 0.9 down (``sigmas``: ``steps`` values and the terminal 0) over a window of at most 3
    frames (``kv_max_frames=3``: the sink and 2 history frames, trimmed from the third chunk on).
    Returns the latents ``(1, 4, 7, 8, 8)``."""
    sigmas = tuple(0.9 * (1.0 - i / steps) for i in range(steps)) + (0.0,)
    return dict(sana_latent=_noise(REFINER_LATENT, 1000 + seed), prompt="A red car on a cat", fps=24.0, sink_size=1,
                block_size=2, kv_max_frames=3, sigmas=sigmas, output_type="latent",
                generator=torch.Generator().manual_seed(seed))


BUILDERS = {"minimax_h3": tiny_minimax_h3_pipeline, "sana_wm_refiner": tiny_sana_wm_refiner}
CALLS = {"minimax_h3": minimax_h3_call, "sana_wm_refiner": sana_wm_refiner_call}
