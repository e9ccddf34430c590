"""Tiny pipelines of more diffusers video families, built offline from seeded random components (no
text encoder; prompt embeddings are passed in where the pipeline takes them): Sana-WM (camera-controlled
image-to-video), Wan Animate (character animation, one denoising loop per segment) and Cosmos 3 Omni
(text-to-video by a language model over packed token sequences: it reads prompt text, so the
pipeline carries a tiny word-level tokenizer built here; no safety checker, no sound). Each family
has a builder (``BUILDERS``) and the keyword arguments of one seeded CFG call returning latents
(``CALLS``)."""

from __future__ import annotations

from typing import Any

import torch

from tests.pipelines import _WAN_SIZES, _finish, _text, tiny_wan_pipeline
from tests.pipelines_i2v import _clip_encoder, _pil_image, _video


# ------------------------------------------------------------------------------------------ Sana-WM


def tiny_sana_wm_pipeline(seed: int = 0) -> Any:
    """A ``SanaWMPipeline``: 2 blocks of width 32 (2 heads; a gated-delta linear attention in block 0,
    softmax attention in block 1, both camera-conditioned; Plucker embeddings after each attention),
    the flow-matching Euler scheduler and a one-block LTX-2 video VAE (2x spatial and temporal
    compression, 4 latent channels), which encodes the first frame."""
    from diffusers import AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler, SanaWMPipeline, SanaWMTransformer3DModel

    torch.manual_seed(seed)
    vae = AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,),
        layers_per_block=(1,), decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
        decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False), downsample_type=("spatial",),
        upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=False, patch_size=1, patch_size_t=1,
        encoder_causal=True, decoder_causal=False,
    ).eval()
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    # the Plucker embedding has 6 channels per pixel frame of a latent frame: 6 x the temporal compression
    transformer = SanaWMTransformer3DModel(
        in_channels=4, num_layers=2, hidden_size=32, num_attention_heads=2, softmax_every_n=2, linear_head_dim=16,
        chunk_plucker_channels=6 * vae.temporal_compression_ratio, chunk_plucker_post_attn_blocks=2, image_size=16,
        caption_channels=32, mlp_ratio=2.0,
    ).eval()
    return _finish(SanaWMPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                                  scheduler=FlowMatchEulerDiscreteScheduler()))


def sana_wm_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """5 frames of 16x16 (3 latent frames of 8x8) from a 24x24 image (resized and cropped) along a
    camera path of 2 steps forward and 2 turning left, returning latents. The embeddings are
    ``(1, 1, L, D)`` as the pipeline's Gemma-2 encoding gives them."""
    generator = torch.Generator().manual_seed(1000 + seed)
    mask = torch.ones(1, 8)
    return dict(image=_pil_image(24, 24, seed), prompt=None, action="w-2,j-2", intrinsics=[20.0, 20.0, 12.0, 12.0],
                height=16, width=16, num_frames=5, num_inference_steps=steps, guidance_scale=guidance_scale,
                prompt_embeds=_text(generator, 8, 32)[:, None], prompt_attention_mask=mask,
                negative_prompt_embeds=_text(generator, 8, 32, 0.1)[:, None], negative_prompt_attention_mask=mask,
                output_type="latent", generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------- Wan Animate


def tiny_wan_animate_pipeline(seed: int = 0) -> Any:
    """A ``WanAnimatePipeline``: the tiny Wan sizes on ``WanAnimateTransformer3DModel`` (input: the
    noise, the reference-image / previous-segment latents and their mask, 4 + 4 + 4 channels; pose
    latents; CLIP image tokens with their own key/value projections), a motion encoder of 16x16 face
    frames and a face cross-attention after every block (``inject_face_latents_blocks=1``), a 2-layer
    CLIP vision encoder for the reference image, the tiny Wan VAE (it encodes the reference image, the
    pose video and the previous segment's frames) and the UniPC flow scheduler Wan uses."""
    from diffusers import UniPCMultistepScheduler, WanAnimatePipeline, WanAnimateTransformer3DModel

    torch.manual_seed(seed)
    transformer = WanAnimateTransformer3DModel(
        **{**_WAN_SIZES, "in_channels": 12}, latent_channels=4, image_dim=16, added_kv_proj_dim=32,
        motion_encoder_channel_sizes={"4": 8, "8": 8, "16": 8}, motion_encoder_size=16, motion_style_dim=8,
        motion_dim=4, motion_encoder_dim=8, face_encoder_hidden_dim=8, face_encoder_num_heads=2,
        inject_face_latents_blocks=1, motion_encoder_batch_size=4,
    ).eval()
    encoder, processor = _clip_encoder()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return _finish(WanAnimatePipeline(tokenizer=None, text_encoder=None, vae=tiny_wan_pipeline(seed).vae,
                                      scheduler=scheduler, image_processor=processor, image_encoder=encoder,
                                      transformer=transformer))


#: Segments of ``wan_animate_call``: a 9-frame driving video in segments of 5 frames overlapping by 1.
WAN_ANIMATE_SEGMENTS = 2


def wan_animate_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """A 32x32 character image animated by a 9-frame pose video (32x32) and face video (16x16) in 2
    segments of 5 frames (the second conditioned on the first's last frame): 2 denoising loops of
    ``steps`` steps, each over 3 latent frames of 4x4 (the reference frame and the segment's 2);
    returns the last segment's latents."""
    generator = torch.Generator().manual_seed(1000 + seed)
    return dict(image=_pil_image(32, 32, seed), pose_video=_video(9, 32, 32, seed),
                face_video=_video(9, 16, 16, seed + 1), prompt=None, negative_prompt=None,
                prompt_embeds=_text(generator, 8, 32), negative_prompt_embeds=_text(generator, 8, 32, 0.1), height=32,
                width=32, segment_frame_length=5, num_inference_steps=steps, guidance_scale=guidance_scale,
                output_type="latent", generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------- Cosmos 3 Omni

#: Special tokens: padding, the chat-template turn markers (``<|im_end|>`` is the eos token the pipeline
#: appends), ``<|vision_start|>`` (appended after eos: the start of generation) and the unknown word.
_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "[UNK]")
#: The words of the system prompt, the duration / resolution templates (and their negations) and the prompt.
_WORDS = ("you are a helpful assistant who will generate videos images from give prompt system user the video is "
          "not seconds long and of fps this image resolution x . , cat on red car 0 1 2 3 4 5 6 7 8 9").split()
_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tokenizer() -> Any:
    """A lowercasing word-level ``PreTrainedTokenizerFast`` of 50 tokens (unknown words map to ``[UNK]``)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(dict.fromkeys(_SPECIAL + tuple(_WORDS)))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", additional_special_tokens=list(_SPECIAL[1:5]),
                                   chat_template=_CHAT_TEMPLATE)


def tiny_cosmos3_pipeline(seed: int = 0) -> Any:
    """A ``Cosmos3OmniPipeline``: a 2-layer transformer of width 32 (2 query heads and 1 key/value head
    of 16 dims, 3-D mRoPE split 4/2/2; each layer has an understanding (text) and a generation (noisy
    vision) pathway), 2x2 latent patches of the tiny Wan VAE's 4 channels (8x spatial, 4x temporal
    compression; it encodes an all-zero video even for text-to-video), the word-level tokenizer above
    and the UniPC flow-matching scheduler."""
    from diffusers import Cosmos3OmniPipeline, Cosmos3OmniTransformer, UniPCMultistepScheduler

    vae = tiny_wan_pipeline(seed).vae
    text_tokenizer = _tokenizer()
    torch.manual_seed(seed)
    transformer = Cosmos3OmniTransformer(
        head_dim=16, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
        num_hidden_layers=2, latent_channel=4, latent_patch_size=2, patch_latent_dim=16, rope_axes_dim=[4, 2, 2],
        vocab_size=len(text_tokenizer),
    ).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    return _finish(Cosmos3OmniPipeline(transformer=transformer, text_tokenizer=text_tokenizer, vae=vae,
                                       scheduler=scheduler, enable_safety_checker=False))


def cosmos3_call(pipe: Any, steps: int, seed: int = 0, guidance_scale: float = 5.0) -> dict[str, Any]:
    """9 frames of 32x32 (3 latent frames of 4x4: 12 vision tokens after 48-52 text tokens) from a text
    prompt and the default empty negative prompt, returning latents ``(1, 4, 3, 4, 4)``."""
    return dict(prompt="A red car on a cat", negative_prompt=None, num_frames=9, height=32, width=32,
                num_inference_steps=steps, guidance_scale=guidance_scale, output_type="latent",
                generator=torch.Generator().manual_seed(seed))


BUILDERS = {"sana_wm": tiny_sana_wm_pipeline, "wan_animate": tiny_wan_animate_pipeline, "cosmos3": tiny_cosmos3_pipeline}
CALLS = {"sana_wm": sana_wm_call, "wan_animate": wan_animate_call, "cosmos3": cosmos3_call}
