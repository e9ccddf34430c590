"""LTX-2 (diffusers ``LTX2VideoTransformer3DModel`` / ``LTX2Pipeline``, ``LTX2ImageToVideoPipeline``):
a joint audio-video model guided by up to four passes a step.

Each step the pipeline calls the transformer up to three times, each under a ``cache_context``:

- ``"cond_uncond"``: ``[uncond, cond]`` along the batch (only ``cond`` without CFG);
- ``"uncond_stg"``: spatio-temporal guidance, the cond pass with the self-attention of the blocks in
  ``spatio_temporal_guidance_blocks`` perturbed (when ``stg_scale > 0`` or ``audio_stg_scale > 0``);
- ``"uncond_modality"``: modality isolation, the cond pass without the audio-to-video and
  video-to-audio attentions (when ``modality_scale > 1`` or ``audio_modality_scale > 1``).

So the run's branches are "uncond", "cond", "uncond_stg" and "uncond_modality" (those the call turns
on, read from the pipeline's ``do_*`` properties), in three call groups (``call_groups``). The
perturbed passes are branches of their own: every policy builds them from their own outputs, and
CFG-Cache rebuilds only "uncond" from "cond" unless its ``rebuild`` names them.

Every call takes video and audio latents and returns ``(video, audio)``: packed video tokens
``(B, F*H*W, C)`` on the latent grid (``num_frames``, ``height``, ``width``, read by ``frame_grid``)
and audio tokens ``(B, T, C)``, one per audio latent frame. The denoiser's layouts are therefore
``("BLC", "BTC")``. Each ``LTX2VideoTransformerBlock`` carries both streams and returns
``(hidden_states, audio_hidden_states)``: a residual block site, cached against those two inputs
by name. Its video sites are the
self-attention (``attn1``, ``attn.joint``), the text cross-attention (``attn2``, ``attn.cross``)
and the feed-forward (``ff``, ``mlp``); its audio sites are their audio counterparts
(``audio_attn1``, ``audio_attn2``, ``audio_ff``) with the kinds ``audio.attn.joint``,
``audio.attn.cross`` and ``audio.mlp`` (named ``blocks.i.audio.*``), so a policy selects the audio
stream by the kind ``audio`` and the video stream's kinds leave it alone. The cross-modal
attentions (``audio_to_video_attn``, ``video_to_audio_attn``) are no sites: the modality-isolation
pass does not call them, so a plan for them would not describe that branch.

The modular pipelines (``LTX2ModularPipeline``, ``LTX25ModularPipeline``) call the transformer once
per prediction their guiders turn on (``LTX2Guidance``: the video guider's, then the audio
guider's), each under the prediction's name: ``"pred_cond"``, ``"pred_uncond"``,
``"pred_cond_stg"``, ``"pred_cond_modality"``; the run's branches are the union of the guiders'
``active_predictions()``.

The pipelines pass the timestep as ``sigma`` too, a view of the schedule's element in every call
(the image-to-video pipeline's ``timestep`` is per token, 0 on the conditioning frame): the run
clock reads ``sigma``.
"""

from __future__ import annotations

from typing import Any

from cachekit.adapter import Adapter, is_modular
from cachekit.errors import AdapterError
from cachekit.registry import hookimpl
from cachekit.sites import Site
from cachekit.values import first_tensor

from .ltx import terminal_steps

#: (site name suffix, kind, module attribute) of each block's children: video first, then audio.
_CHILDREN = (
    ("attn.joint", "attn.joint", "attn1"),
    ("attn.cross", "attn.cross", "attn2"),
    ("mlp", "mlp", "ff"),
    ("audio.attn.joint", "audio.attn.joint", "audio_attn1"),
    ("audio.attn.cross", "audio.attn.cross", "audio_attn2"),
    ("audio.mlp", "audio.mlp", "audio_ff"),
)

#: The block inputs its two outputs are cached against (named: the perturbed blocks of the STG pass also
#: take ``all_perturbed``, a 0-d tensor, which is no stream).
_STREAMS = ("hidden_states", "audio_hidden_states")

#: The guidance passes beside cond, and the pipeline property that turns each on.
_PASSES = (("uncond", "do_classifier_free_guidance"), ("uncond_stg", "do_spatio_temporal_guidance"),
           ("uncond_modality", "do_modality_isolation_guidance"))


#: A modular pipeline's calls: the guider's prediction names, each one branch, in the guider's order.
_PREDICTIONS = (("pred_cond", ("cond",)), ("pred_uncond", ("uncond",)), ("pred_cond_stg", ("uncond_stg",)),
                ("pred_cond_modality", ("uncond_modality",)))


class LTX2Adapter(Adapter):
    """Sites per block i: the block (``transformer_blocks.i``, residual over both streams), its video
    self-attention, text cross-attention and feed-forward, and the audio stream's three. Output:
    video tokens on the latent grid and audio tokens in time."""

    name = "ltx2"
    model_classes = ("LTX2VideoTransformer3DModel",)
    cfg_layout = "split"
    call_order = ("uncond", "cond", "uncond_stg", "uncond_modality")
    call_groups = (("cond_uncond", ("uncond", "cond")), ("uncond_stg", ("uncond_stg",)),
                   ("uncond_modality", ("uncond_modality",)))
    timestep_input = "sigma"

    def __init__(self, model: Any, pipe: Any = None) -> None:
        super().__init__(model, pipe)
        if is_modular(pipe):  # one call per guider prediction, cond first
            self.call_order = tuple(branch for _, (branch,) in _PREDICTIONS)
            self.call_groups = _PREDICTIONS

    def run_branches(self, pipe: Any) -> tuple[str, ...]:
        if is_modular(pipe):
            guiders = [g for g in (getattr(pipe, "guider", None), getattr(pipe, "audio_guider", None)) if g is not None]
            active = {name for guider in guiders for name in guider.active_predictions()}
            return tuple(branch for name, (branch,) in _PREDICTIONS if name == "pred_cond" or name in active)
        missing = [prop for _, prop in _PASSES if not hasattr(type(pipe), prop)]
        if len(missing) == len(_PASSES) and getattr(pipe, "_guidance_scale", None) is None:
            return ("cond",)  # a pipeline without guidance (the DFR pipelines' distilled schedule)
        if missing:
            raise AdapterError(f"adapter '{self.name}': {type(pipe).__name__} has no {', '.join(missing)}, which tell "
                               "which guidance passes its call runs; use it with an LTX-2 pipeline")
        on = {branch: bool(getattr(pipe, prop)) for branch, prop in _PASSES}
        return tuple(b for b in self.call_order if b == "cond" or on[b])

    def sites(self) -> list[Site]:
        sites = [Site("denoiser", "denoiser", "", layout=("BLC", "BTC"))]
        for i, module in enumerate(self.model.transformer_blocks):
            block, path = f"blocks.{i}", f"transformer_blocks.{i}"
            sites.append(Site(block, "block", path, i, "denoiser", residual=_STREAMS))
            sites += [Site(f"{block}.{suffix}", kind, f"{path}.{attr}", i, block)
                      for suffix, kind, attr in _CHILDREN if getattr(module, attr, None) is not None]
        return sites

    def loop_steps(self, pipe: Any) -> int | None:
        return terminal_steps(pipe)

    def frame_grid(self, args: tuple, kwargs: dict[str, Any]) -> tuple[int, int, int]:
        if any(kwargs.get(k) is None for k in ("num_frames", "height", "width")):
            raise AdapterError(f"adapter '{self.name}': the call passes no num_frames/height/width (the latent "
                               "grid), so its video tokens cannot be mapped to frames; pass them to the transformer")
        config = self.model.config
        grid = (kwargs["num_frames"] // config.patch_size_t, kwargs["height"] // config.patch_size,
                kwargs["width"] // config.patch_size)
        tokens = first_tensor(args, kwargs).shape[1]
        if tokens != grid[0] * grid[1] * grid[2]:
            raise AdapterError(
                f"adapter '{self.name}': the call carries {tokens} video tokens for a grid of {grid[0]} x {grid[1]} x "
                f"{grid[2]}: tokens appended past the grid (a keyframe condition, a reference video) lie on no frame, "
                "so CFG-Cache's frequency-domain rebuild cannot run on this pipeline call; leave cfg_cache out "
                "(the quality and fast presets, attention reuse and the step-level policies run)")
        return grid


@hookimpl
def cachekit_adapters() -> list[type]:
    return [LTX2Adapter]
