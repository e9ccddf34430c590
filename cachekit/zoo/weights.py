"""The embedded model's weights: written by the trainer, loaded into a ready ``LattePipeline``."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from . import moving_shapes as world

WEIGHTS = Path(__file__).parent / "weights" / "moving-shapes.safetensors"


def weights_path(model: str = "moving-shapes") -> Path:
    """Where the package keeps the named embedded model's weights."""
    return WEIGHTS.with_name(f"{model}.safetensors")


def export(transformer: torch.nn.Module, words: torch.nn.Embedding, info: dict[str, Any], path: Path = WEIGHTS,
           model: str = "moving-shapes") -> Path:
    """Write the transformer and the word table as one safetensors file, with the model's config."""
    from safetensors.torch import save_file

    tensors = {f"transformer.{k}": v.contiguous() for k, v in transformer.state_dict().items()}
    tensors["words.weight"] = words.weight.detach().contiguous()
    if model == "moving-shapes-wan":
        configs = {"pipeline": json.dumps("WanPipeline"), "transformer": json.dumps(world.wan_transformer_config()),
                   "scheduler": json.dumps(world.flow_scheduler_config())}
    else:
        configs = {"transformer": json.dumps(world.transformer_config()), "scheduler": json.dumps(world.scheduler_config())}
    meta = {**configs, "vocabulary": json.dumps(world.VOCABULARY), "info": json.dumps(info)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    _read.cache_clear()
    return path


@functools.lru_cache(maxsize=4)
def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    from ..errors import CachekitError

    if not path.exists():
        raise CachekitError(f"the moving-shapes weights are missing ({path}); train them with "
                            "`python -m cachekit.zoo.train` and export with `--export`")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    return tensors, meta


def info(path: Path = WEIGHTS) -> dict[str, Any]:
    """What the exporter recorded about the weights (training steps, ...)."""
    return _read(Path(path))[1]["info"]


def build_pipeline(path: Path = WEIGHTS) -> Any:
    """The pipeline the weights were trained for, holding the trained transformer (pixel space: no VAE,
    no text encoder): a ``LattePipeline`` with DDIM, or a ``WanPipeline`` with flow-matching Euler steps."""
    tensors, meta = _read(Path(path))
    state = {k[len("transformer."):]: v for k, v in tensors.items() if k.startswith("transformer.")}
    if meta.get("pipeline") == "WanPipeline":
        from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

        transformer = WanTransformer3DModel(**meta["transformer"])
        transformer.load_state_dict(state)
        pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer.eval(),
                           scheduler=FlowMatchEulerDiscreteScheduler(**meta["scheduler"]))
    else:
        from diffusers import DDIMScheduler, LattePipeline, LatteTransformer3DModel

        transformer = LatteTransformer3DModel(**meta["transformer"])
        transformer.load_state_dict(state)
        pipe = LattePipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer.eval(),
                             scheduler=DDIMScheduler(**meta["scheduler"]))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompt_embeds(prompts: Sequence[str], path: Path = WEIGHTS) -> torch.Tensor:
    """``(len(prompts), 1, EMBED_DIM)`` embeddings from the trained word table (one token, the sum of
    the words' vectors); the empty prompt ``""`` is zeros (the unconditional embedding)."""
    return world.embed(world.token_ids(prompts), _read(Path(path))[0]["words.weight"])


def call_kwargs(prompts: Sequence[str], steps: int = 30, seed: int = 0, guidance_scale: float = 1.5,
                path: Path = WEIGHTS) -> dict[str, Any]:
    """Keyword arguments for ``pipe(**kwargs)`` generating one clip per prompt; the pipeline returns
    the clips in [-1, 1] as ``(n, 3, FRAMES, SIZE, SIZE)`` in ``.frames``."""
    if _read(Path(path))[1].get("pipeline") == "WanPipeline":
        return wan_call_kwargs(prompts, steps, seed, guidance_scale, path)
    embeds = prompt_embeds(prompts, path)
    pixels = world.SIZE * 8  # the pipeline divides by its VAE scale factor, 8 without a VAE
    return dict(prompt=None, negative_prompt=None, prompt_embeds=embeds,
                negative_prompt_embeds=torch.zeros_like(embeds), num_inference_steps=steps,
                video_length=world.FRAMES, height=pixels, width=pixels, guidance_scale=guidance_scale,
                output_type="latent", mask_feature=False, generator=torch.Generator().manual_seed(seed))


def wan_call_kwargs(prompts: Sequence[str], steps: int = 30, seed: int = 0, guidance_scale: float = 2.0,
                    path: Path | None = None) -> dict[str, Any]:
    """``call_kwargs`` for ``moving-shapes-wan``'s ``WanPipeline``. Without a VAE it assumes Wan's
    scale factors, 4 in time and 8 in space: 8 latent frames of 16 x 16 are ``num_frames=29``
    (``(29 - 1) // 4 + 1``) and 128 x 128 pixels; with ``output_type="latent"`` the denoised
    clips (our pixels) come back unchanged in ``.frames``."""
    path = Path(path) if path is not None else weights_path("moving-shapes-wan")
    embeds = prompt_embeds(prompts, path)
    pixels = world.SIZE * 8
    return dict(prompt=None, negative_prompt=None, prompt_embeds=embeds,
                negative_prompt_embeds=torch.zeros_like(embeds), num_inference_steps=steps,
                num_frames=(world.FRAMES - 1) * 4 + 1, height=pixels, width=pixels, guidance_scale=guidance_scale,
                output_type="latent", generator=torch.Generator().manual_seed(seed))
