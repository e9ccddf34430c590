"""Wan 2.1 / 2.2 (diffusers ``WanTransformer3DModel`` / ``WanPipeline``): split CFG, cond call first.

``WanPipeline`` calls the transformer once per branch and step: ``cache_context("cond")`` then,
only when ``guidance_scale > 1``, ``cache_context("uncond")``. Each ``WanTransformerBlock`` runs a
full spatio-temporal self-attention over all video tokens (``attn1``; there is no separate spatial
or temporal attention, so its kind is ``attn.joint``), a cross-attention to the text (``attn2``) and
a feed-forward (``ffn``), and returns a single tensor: blocks are residual sites, the parents of
their attentions and feed-forward.

Wan 2.2 A14B is two experts of one architecture: ``transformer`` denoises the steps whose timestep
is at least ``boundary_ratio * 1000``, ``transformer_2`` the rest. A session on such a pipeline hooks
both, and each site stands for the same module in either expert: the run is one run of one plan,
each step answered by whichever expert the pipeline calls. Cached features do not cross the switch
unchanged in meaning (the experts have different weights), so a plan that reuses or rebuilds a
site at the first step of the low-noise expert does so from the high-noise expert's outputs.

Wan Animate (``WanAnimateTransformer3DModel`` / ``WanAnimatePipeline``) runs Wan's blocks over the
noise, the reference-image and previous-segment latents, plus pose latents added to the patch
embeddings, and after every ``inject_face_latents_blocks``-th block (block 0 included) adds the
output of a face cross-attention (``face_adapter.j``) over motion features of the face video. The
pipeline generates the video in segments, one full denoising loop each (its timesteps are set again
per segment): each loop is a run of its own. CFG as Wan's (``cache_context("cond")`` then
``("uncond")``; the uncond call sees a blanked face video).

Wan Animate 2 (``WanAnimate2Transformer3DModel``; diffusers has it as modular pipelines only,
``WanAnimate2ModularPipeline``) takes lists of per-item tensors, ``(C, F, H, W)`` without a batch
axis, and returns ``Transformer2DModelOutput(sample=[...])``. Before each segment's loop it is
called once with ``kv_cache_mode="extract"`` to fill the reference key/value cache its
self-attention reads: that call is no denoising step. Its blocks are Wan's (``self_attn``,
``cross_attn``, ``ffn``); the uncond call skips block 9 (``is_uncondtion``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from cachekit.adapter import Adapter, BlockListAdapter
from cachekit.registry import hookimpl
from cachekit.sites import Site


class WanAdapter(Adapter):
    """Sites per block i: the block (``blocks.i``, residual), and as its children the spatio-temporal
    self-attention (``blocks.i.attn1``), the text cross-attention (``blocks.i.attn2``) and the
    feed-forward (``blocks.i.ffn``). The denoiser's output is ``(B, C, F, H, W)``."""

    name = "wan"
    model_classes = ("WanTransformer3DModel",)
    cfg_layout = "split"
    call_order = ("cond", "uncond")
    #: Latent (frames, height, width) of ``example_call``: Wan's 81-frame 480x832 video. Set a
    #: smaller one on the adapter instance for a quick dry run of a small model.
    example_latent: ClassVar[tuple[int, int, int]] = (21, 60, 104)
    #: Text tokens of ``example_call``: the pipeline pads prompts to ``max_sequence_length=512``.
    example_text_tokens: ClassVar[int] = 512

    def modules(self, site: Site) -> list[torch.nn.Module]:
        """The site's module in ``transformer`` and, on a two-expert (Wan 2.2) pipeline, in ``transformer_2``."""
        second = getattr(self.pipe, "transformer_2", None)
        if second is None:
            return [self.module(site)]
        return [self.module(site), second.get_submodule(site.module_path) if site.module_path else second]

    def sites(self) -> list[Site]:
        sites = [Site("denoiser", "denoiser", "", layout="BCFHW")]
        for i in range(len(self.model.blocks)):
            block = f"blocks.{i}"
            sites += [
                Site(block, "block", block, i, "denoiser", residual=True),
                Site(f"blocks.{i}.attn.joint", "attn.joint", f"blocks.{i}.attn1", i, block),
                Site(f"blocks.{i}.attn.cross", "attn.cross", f"blocks.{i}.attn2", i, block),
                Site(f"blocks.{i}.mlp", "mlp", f"blocks.{i}.ffn", i, block),
            ]
        return sites

    def example_call(self, batch: int) -> tuple[tuple, dict[str, Any]]:
        config = self.model.config
        param = next(self.model.parameters())
        like = dict(dtype=param.dtype, device=param.device)
        frames, height, width = self.example_latent
        p_t, p_h, p_w = config.patch_size
        frames, height, width = -(-frames // p_t) * p_t, -(-height // p_h) * p_h, -(-width // p_w) * p_w
        hidden = torch.zeros(batch, config.in_channels, frames, height, width, **like)
        text = torch.zeros(batch, self.example_text_tokens, config.text_dim, **like)
        kwargs: dict[str, Any] = {
            "timestep": torch.full((batch,), 500.0, device=param.device),
            "encoder_hidden_states": text,
            "return_dict": False,
        }
        if config.image_dim is not None:  # image-to-video: CLIP image tokens (257, or as many as positions)
            tokens = config.pos_embed_seq_len or 257
            kwargs["encoder_hidden_states_image"] = torch.zeros(batch, tokens, config.image_dim, **like)
        return (hidden,), kwargs


class VaceAdapter(WanAdapter):
    """Wan VACE (``WanVACETransformer3DModel`` / ``WanVACEPipeline``): Wan's blocks and sites; the extra
    ``vace_blocks``, which add control hints between the blocks, are not sites."""

    name = "vace"
    model_classes = ("WanVACETransformer3DModel",)

    def stack_blocks(self, sites: list[Site]) -> list[Site]:
        """None: the model adds a control hint to the hidden states after every VACE layer (block 0
        among them), so no span of blocks can be skipped by putting back one residual."""
        return []


class SkyReelsV2Adapter(WanAdapter):
    """SkyReels-V2 (``SkyReelsV2Transformer3DModel`` / ``SkyReelsV2Pipeline``): Wan's blocks and sites.
    The diffusion-forcing pipelines in asynchronous mode (``ar_step > 0``) walk a timestep matrix, one
    row of per-frame timesteps a step, later frames lagging: more steps than the schedule has."""

    name = "skyreels_v2"
    model_classes = ("SkyReelsV2Transformer3DModel",)

    def loop_steps(self, pipe: Any) -> int | None:
        """The rows of a diffusion-forcing pipeline's timestep matrix (``num_timesteps``, set before its
        loop), where they are not the schedule's steps."""
        if pipe is None or not hasattr(pipe, "generate_timestep_matrix"):
            return None
        rows = getattr(pipe, "_num_timesteps", None)
        return rows if rows is not None and rows != len(pipe.scheduler.timesteps) else None


class ChronoEditAdapter(WanAdapter):
    """ChronoEdit (``ChronoEditTransformer3DModel`` / ``ChronoEditPipeline``, image editing as a short
    video): Wan's blocks and sites; its ``attn2`` also attends to CLIP image tokens. The pipeline
    calls the transformer once per branch, cond first, without ``cache_context``."""

    name = "chronoedit"
    model_classes = ("ChronoEditTransformer3DModel",)


class WanAnimateAdapter(WanAdapter):
    """Wan Animate: Wan's sites per block, and the face cross-attention the model adds after block
    ``i = j * inject_face_latents_blocks`` (``blocks.i.attn.face``: ``face_adapter.j``, attn.cross, a
    child of the denoiser, which calls it). No ``stack`` site: a face cross-attention output enters
    after block 0 and every ``inject_face_latents_blocks``-th block after it."""

    name = "wan_animate"
    model_classes = ("WanAnimateTransformer3DModel",)

    def sites(self) -> list[Site]:
        sites = super().sites()
        every = self.model.config.inject_face_latents_blocks
        for j in range(len(self.model.face_adapter)):
            sites.append(Site(f"blocks.{j * every}.attn.face", "attn.cross", f"face_adapter.{j}", j * every, "denoiser"))
        return sites

    def stack_blocks(self, sites: list[Site]) -> list[Site]:
        """None: a face cross-attention output is added to the hidden states between blocks."""
        return []

    def example_call(self, batch: int) -> tuple[tuple, dict[str, Any]]:
        """Wan's example inputs read as one reference latent frame and the segment's F - 1 latent frames,
        with pose latents for the segment's frames and its face video: the 4 (F - 2) + 1 pixel frames
        of the segment (4x temporal compression), ``motion_encoder_size`` pixels square."""
        (hidden,), kwargs = super().example_call(batch)
        config = self.model.config
        frames = hidden.shape[2]
        like = dict(dtype=hidden.dtype, device=hidden.device)
        size = config.motion_encoder_size
        kwargs["pose_hidden_states"] = torch.zeros(batch, config.latent_channels, frames - 1, *hidden.shape[3:], **like)
        kwargs["face_pixel_values"] = torch.zeros(batch, 3, 4 * (frames - 2) + 1, size, size, **like)
        return (hidden,), kwargs


class WanAnimate2Adapter(BlockListAdapter):
    """Sites per block i: the block (``blocks.i``, residual), its self-attention (``.self_attn``,
    attn.joint; it also attends to the segment's reference key/values), the text and image
    cross-attention (``.cross_attn``, attn.cross) and feed-forward (``.ffn``, mlp). Output: one
    item's ``(C, F, H, W)`` per list entry. The ``kv_cache_mode="extract"`` call that fills the
    reference cache before a segment's loop is no step."""

    name = "wan_animate2"
    model_classes = ("WanAnimate2Transformer3DModel",)
    cfg_layout = "split"
    call_order = ("cond", "uncond")
    block_list = "blocks"
    output_layout = "CFHW"
    block_children = (("attn.joint", "attn.joint", "self_attn"), ("attn.cross", "attn.cross", "cross_attn"),
                      ("mlp", "mlp", "ffn"))

    def is_step_call(self, args: tuple, kwargs: dict[str, Any]) -> bool:
        return kwargs.get("kv_cache_mode") != "extract"


@hookimpl
def cachekit_adapters() -> list[type]:
    return [WanAdapter, VaceAdapter, SkyReelsV2Adapter, ChronoEditAdapter, WanAnimateAdapter, WanAnimate2Adapter]
