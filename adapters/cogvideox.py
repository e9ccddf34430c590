"""CogVideoX (diffusers ``CogVideoXTransformer3DModel`` / ``CogVideoXPipeline``): batched CFG [uncond, cond].

Each CogVideoX block runs one joint self-attention over the text and video tokens together
(``attn1``, called with ``hidden_states`` and ``encoder_hidden_states``; it returns the tuple
``(hidden_states, encoder_hidden_states)``, which the runtime caches as a tuple) and one
feed-forward over the concatenated tokens (``ff``). A block returns ``(hidden_states,
encoder_hidden_states)``: as a residual site it caches one difference per stream. CogVideoX 1.5
patches time as well (``patch_size_t = 2``); its sites are the same.
"""

from __future__ import annotations

from typing import Any

import torch

from cachekit.adapter import Adapter
from cachekit.registry import hookimpl
from cachekit.sites import Site


class CogVideoXAdapter(Adapter):
    """Sites per block i: the block (``transformer_blocks.i``, residual), its joint text+video
    self-attention (``.attn1``) and feed-forward (``.ff``). The denoiser's output is ``(B, F, C, H, W)``."""

    name = "cogvideox"
    model_classes = ("CogVideoXTransformer3DModel",)
    cfg_layout = "batched"
    call_order = ("uncond", "cond")
    #: The inputs that carry the CFG branches are detected from dim 0 (the model's ``timestep``, the
    #: blocks' ``temb``); the rotary table, one row per video token, is shared by the branches.
    shared_kwargs = ("image_rotary_emb",)

    def sites(self) -> list[Site]:
        sites = [Site("denoiser", "denoiser", "", layout="BFCHW")]
        for i in range(len(self.model.transformer_blocks)):
            block, path = f"blocks.{i}", f"transformer_blocks.{i}"
            sites += [
                Site(block, "block", path, i, "denoiser", residual=True),
                Site(f"{block}.attn.joint", "attn.joint", f"{path}.attn1", i, block),
                Site(f"{block}.mlp", "mlp", f"{path}.ff", i, block),
            ]
        return sites

    def example_call(self, batch: int) -> tuple[tuple, dict[str, Any]]:
        config = self.model.config
        param = next(self.model.parameters())
        like = dict(dtype=param.dtype, device=param.device)
        frames = (config.sample_frames - 1) // config.temporal_compression_ratio + 1
        if config.patch_size_t is not None:  # CogVideoX 1.5 pads the latent frames to a multiple of p_t
            frames = -(-frames // config.patch_size_t) * config.patch_size_t
        height, width = config.sample_height, config.sample_width
        hidden = torch.zeros(batch, frames, config.in_channels, height, width, **like)
        # learned / sin-cos positional embeddings cover exactly max_text_seq_length text tokens
        text = torch.zeros(batch, config.max_text_seq_length, config.text_embed_dim, **like)
        kwargs: dict[str, Any] = {
            "encoder_hidden_states": text,
            "timestep": torch.full((batch,), 500, dtype=torch.long, device=param.device),
            "return_dict": False,
        }
        if config.ofs_embed_dim:
            kwargs["ofs"] = torch.full((1,), 2.0, **like)
        if config.use_rotary_positional_embeddings:
            kwargs["image_rotary_emb"] = self._rotary(frames, param.device)
        return (hidden,), kwargs

    def _rotary(self, frames: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's rotary embeddings for a video at the model's sample size."""
        from diffusers.models.embeddings import get_3d_rotary_pos_embed

        config = self.model.config
        p, p_t = config.patch_size, config.patch_size_t
        grid = (config.sample_height // p, config.sample_width // p)
        if p_t is None:  # CogVideoX 1.0: the grid is the base size, so the crop region is all of it
            return get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=((0, 0), grid),
                                           grid_size=grid, temporal_size=frames, device=device)
        return get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=None, grid_size=grid,
                                       temporal_size=(frames + p_t - 1) // p_t, grid_type="slice", max_size=grid,
                                       device=device)


@hookimpl
def cachekit_adapters() -> list[type]:
    return [CogVideoXAdapter]
