"""Small stand-ins for models whose code and weights are not installable here: the attribute paths,
forward signatures, output shapes and CFG call layouts of Open-Sora 1.2's STDiT3, Open-Sora-Plan
v1.1's LatteT2V and Vchitect-2.0's VchitectXLTransformerModel, with simple computations of their own.
Each has a ``sample(model, steps)`` loop that calls it as its sampler does."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffusers.utils import BaseOutput


def _norm(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.layer_norm(x, x.shape[-1:])


class SelfAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, -1)
        return self.proj(torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, -1) @ v)


class CrossAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(context).chunk(2, -1)
        return self.proj(torch.softmax(self.q(x) @ k.transpose(1, 2) / x.shape[-1] ** 0.5, -1) @ v)


class Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


def _patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, H/p * W/p, C*p*p)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // p) * (w // p), c * p * p)


def _unpatchify(x: torch.Tensor, c: int, h: int, w: int, p: int) -> torch.Tensor:
    n = x.shape[0]
    return x.reshape(n, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


def _schedule(steps: int) -> torch.Tensor:
    return torch.linspace(999, 0, steps)


# -- Open-Sora 1.2: STDiT3 -----------------------------------------------------------------------

class MultiHeadCrossAttention(nn.Module):
    """Cross-attention to the text tokens of all samples packed in one sequence, split by ``mask``
    (the per-sample token counts), as STDiT3 passes them."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.inner = CrossAttention(dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mask: list[int]) -> torch.Tensor:
        parts = cond[0].split(mask)
        return torch.cat([self.inner(x[i:i + 1], part[None]) for i, part in enumerate(parts)])


class STDiT3Block(nn.Module):
    def __init__(self, dim: int, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        self.attn, self.cross_attn, self.mlp = SelfAttention(dim), MultiHeadCrossAttention(dim), Mlp(dim)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim ** 0.5)

    def forward(self, x, y, t, mask=None, x_mask=None, t0=None, T=None, S=None):
        B, N, C = x.shape
        shift, scale, gate, shift2, scale2, gate2 = (self.scale_shift_table[None] + t.reshape(B, 6, -1)).chunk(6, 1)
        h = _norm(x) * (1 + scale) + shift
        if self.temporal:
            h = self.attn(h.reshape(B, T, S, C).transpose(1, 2).reshape(B * S, T, C))
            h = h.reshape(B, S, T, C).transpose(1, 2).reshape(B, N, C)
        else:
            h = self.attn(h.reshape(B * T, S, C)).reshape(B, N, C)
        x = x + gate * h
        x = x + self.cross_attn(x, y, mask)
        return x + gate2 * self.mlp(_norm(x) * (1 + scale2) + shift2)


class STDiT3(nn.Module):
    def __init__(self, in_channels: int = 4, dim: int = 32, depth: int = 2, caption: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.in_channels, self.out_channels, self.patch = in_channels, 2 * in_channels, 2
        self.x_embedder = nn.Linear(in_channels * 4, dim)
        self.t_embedder = nn.Linear(1, dim)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.y_embedder = nn.Linear(caption, dim)
        self.spatial_blocks = nn.ModuleList(STDiT3Block(dim, False) for _ in range(depth))
        self.temporal_blocks = nn.ModuleList(STDiT3Block(dim, True) for _ in range(depth))
        self.final_layer = nn.Linear(dim, 4 * self.out_channels)

    def forward(self, x, timestep, y, mask=None, x_mask=None, fps=None, height=None, width=None, **kwargs):
        B, C, T, H, W = x.shape
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)
        h = self.x_embedder(_patchify(frames, self.patch))
        S = h.shape[1]
        h = h.reshape(B, T * S, -1)
        t_mlp = self.t_block(self.t_embedder(timestep[:, None].float() / 1000))
        text = self.y_embedder(y).squeeze(1)  # (B, L, dim), packed into one sequence
        lens = [text.shape[1]] * B
        text = text.reshape(1, -1, text.shape[-1])
        for spatial, temporal in zip(self.spatial_blocks, self.temporal_blocks):
            h = spatial(h, text, t_mlp, lens, x_mask, None, T, S)
            h = temporal(h, text, t_mlp, lens, x_mask, None, T, S)
        out = _unpatchify(self.final_layer(h).reshape(B * T, S, -1), self.out_channels, H, W, self.patch)
        return out.reshape(B, T, self.out_channels, H, W).transpose(1, 2)


def sample_open_sora(model: STDiT3, steps: int = 30, guidance: float = 4.0) -> torch.Tensor:
    """Rectified-flow Euler loop with the batch [cond, null] as Open-Sora's sampler stacks it."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, model.in_channels, 3, 8, 8, generator=g)
    y = torch.randn(1, 1, 5, 16, generator=g)
    y_null = torch.zeros_like(y)
    with torch.no_grad():
        for t in _schedule(steps):
            out = model(torch.cat([z, z]), torch.stack([t, t]), torch.cat([y, y_null]))
            cond, uncond = out[:, : model.in_channels].chunk(2)
            z = z - 0.02 * (uncond + guidance * (cond - uncond))
    return z


# -- Open-Sora-Plan v1.1: LatteT2V ----------------------------------------------------------------

@dataclass
class Transformer3DModelOutput(BaseOutput):
    sample: torch.Tensor


class BasicTransformerBlock(nn.Module):
    """The spatial block: self-attention (attn1), cross-attention (attn2), feed-forward (ff)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attn1, self.attn2, self.ff = SelfAttention(dim), CrossAttention(dim), Mlp(dim)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim ** 0.5)

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                timestep=None, cross_attention_kwargs=None, class_labels=None):
        B = hidden_states.shape[0]
        shift, scale, gate, shift2, scale2, gate2 = (self.scale_shift_table[None] + timestep.reshape(B, 6, -1)).chunk(6, 1)
        x = hidden_states + gate * self.attn1(_norm(hidden_states) * (1 + scale) + shift)
        x = x + self.attn2(x, encoder_hidden_states)
        return x + gate2 * self.ff(_norm(x) * (1 + scale2) + shift2)


class BasicTransformerBlock_(nn.Module):  # noqa: N801 - the model's own class name
    """The temporal block: self-attention over frames (attn1), feed-forward (ff)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attn1, self.ff = SelfAttention(dim), Mlp(dim)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim ** 0.5)

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                timestep=None, cross_attention_kwargs=None, class_labels=None):
        B = hidden_states.shape[0]
        shift, scale, gate, shift2, scale2, gate2 = (self.scale_shift_table[None] + timestep.reshape(B, 6, -1)).chunk(6, 1)
        x = hidden_states + gate * self.attn1(_norm(hidden_states) * (1 + scale) + shift)
        return x + gate2 * self.ff(_norm(x) * (1 + scale2) + shift2)


class LatteT2V(nn.Module):
    def __init__(self, in_channels: int = 4, dim: int = 32, depth: int = 2, caption: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.in_channels, self.out_channels, self.patch = in_channels, 2 * in_channels, 2
        self.pos_embed = nn.Linear(in_channels * 4, dim)
        self.adaln_single = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.caption_projection = nn.Linear(caption, dim)
        self.transformer_blocks = nn.ModuleList(BasicTransformerBlock(dim) for _ in range(depth))
        self.temporal_transformer_blocks = nn.ModuleList(BasicTransformerBlock_(dim) for _ in range(depth))
        self.proj_out = nn.Linear(dim, 4 * self.out_channels)

    def forward(self, hidden_states, timestep=None, encoder_hidden_states=None, added_cond_kwargs=None,
                class_labels=None, cross_attention_kwargs=None, attention_mask=None, encoder_attention_mask=None,
                use_image_num=0, enable_temporal_attentions=True, return_dict=True):
        B, C, F, H, W = hidden_states.shape
        h = self.pos_embed(_patchify(hidden_states.transpose(1, 2).reshape(B * F, C, H, W), self.patch))
        S, D = h.shape[1], h.shape[2]
        t = self.adaln_single(timestep[:, None].float() / 1000)  # (B, 6D)
        t_spatial, t_temporal = t.repeat_interleave(F, 0), t.repeat_interleave(S, 0)
        text = self.caption_projection(encoder_hidden_states).repeat_interleave(F, 0)
        for spatial, temporal in zip(self.transformer_blocks, self.temporal_transformer_blocks):
            h = spatial(h, None, text, None, t_spatial, None, None)
            h = h.reshape(B, F, S, D).transpose(1, 2).reshape(B * S, F, D)
            h = temporal(h, None, None, None, t_temporal, None, None)
            h = h.reshape(B, S, F, D).transpose(1, 2).reshape(B * F, S, D)
        out = _unpatchify(self.proj_out(h), self.out_channels, H, W, self.patch)
        out = out.reshape(B, F, self.out_channels, H, W).transpose(1, 2)
        return Transformer3DModelOutput(sample=out) if return_dict else (out,)


def sample_open_sora_plan(model: LatteT2V, steps: int = 150, guidance: float = 7.5) -> torch.Tensor:
    """A DDIM-like loop with the batch [uncond, cond] as Open-Sora-Plan's pipeline stacks it."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(1, model.in_channels, 3, 8, 8, generator=g)
    text = torch.randn(1, 5, 16, generator=g)
    with torch.no_grad():
        for t in _schedule(steps):
            out = model(torch.cat([z, z]), timestep=torch.stack([t, t]).long(),
                        encoder_hidden_states=torch.cat([torch.zeros_like(text), text]), return_dict=False)[0]
            uncond, cond = out[:, : model.in_channels].chunk(2)
            z = z - 0.005 * (uncond + guidance * (cond - uncond))
    return z


# -- Vchitect-2.0: VchitectXLTransformerModel ------------------------------------------------------

class JointAttention(nn.Module):
    """Video and text tokens attended together; returns ``(hidden, encoder)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.inner, self.to_add_out = SelfAttention(dim), nn.Linear(dim, dim)

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, freqs_cis=None,
                full_seqlen=None, Frame=None, timestep=None, *args, **kwargs):  # noqa: N803 - the model's name
        n = hidden_states.shape[1]
        out = self.inner(torch.cat([hidden_states, encoder_hidden_states], 1) + freqs_cis[: n + encoder_hidden_states.shape[1]])
        return out[:, :n], self.to_add_out(out[:, n:])


class JointTransformerBlock(nn.Module):
    def __init__(self, dim: int, context_pre_only: bool = False) -> None:
        super().__init__()
        self.context_pre_only = context_pre_only
        self.norm1 = nn.Linear(dim, 2 * dim)
        self.attn, self.ff = JointAttention(dim), Mlp(dim)
        self.ff_context = None if context_pre_only else Mlp(dim)

    def forward(self, hidden_states, encoder_hidden_states, temb, freqs_cis, full_seqlen, Frame):  # noqa: N803
        scale, gate = self.norm1(temb)[:, None].chunk(2, -1)
        attn_out, context_out = self.attn(hidden_states=_norm(hidden_states) * (1 + scale),
                                          encoder_hidden_states=_norm(encoder_hidden_states), freqs_cis=freqs_cis,
                                          full_seqlen=full_seqlen, Frame=Frame)
        hidden_states = hidden_states + gate * attn_out
        hidden_states = hidden_states + self.ff(_norm(hidden_states))
        if self.context_pre_only:
            return None, hidden_states
        encoder_hidden_states = encoder_hidden_states + context_out
        return encoder_hidden_states + self.ff_context(_norm(encoder_hidden_states)), hidden_states


class VchitectXLTransformerModel(nn.Module):
    def __init__(self, in_channels: int = 4, dim: int = 32, layers: int = 3, joint: int = 16, pooled: int = 8,
                 seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.in_channels, self.patch = in_channels, 2
        self.pos_embed = nn.Linear(in_channels * 4, dim)
        self.time_text_embed = nn.Linear(1 + pooled, dim)
        self.context_embedder = nn.Linear(joint, dim)
        self.transformer_blocks = nn.ModuleList(JointTransformerBlock(dim, i == layers - 1) for i in range(layers))
        self.proj_out = nn.Linear(dim, 4 * in_channels)
        self.freqs_cis = torch.randn(256, dim) * 0.1

    def forward(self, hidden_states, encoder_hidden_states=None, pooled_projections=None, timestep=None,
                joint_attention_kwargs=None, return_dict=True):
        B, F, C, H, W = hidden_states.shape
        h = self.pos_embed(_patchify(hidden_states.reshape(B * F, C, H, W), self.patch))
        temb = self.time_text_embed(torch.cat([timestep[:, None].float() / 1000, pooled_projections], -1))
        text = self.context_embedder(encoder_hidden_states).repeat(F, 1, 1)
        for block in self.transformer_blocks:
            text, h = block(hidden_states=h, encoder_hidden_states=text, temb=temb.repeat(F, 1),
                            freqs_cis=self.freqs_cis, full_seqlen=B * F, Frame=F)
        out = _unpatchify(self.proj_out(h), C, H, W, self.patch)
        return (out,) if not return_dict else Transformer3DModelOutput(sample=out)


def sample_vchitect(model: VchitectXLTransformerModel, steps: int = 100, guidance: float = 7.5) -> torch.Tensor:
    """One call per branch, uncond first, as Vchitect-2.0's pipeline calls the model."""
    g = torch.Generator().manual_seed(5)
    z = torch.randn(1, 3, model.in_channels, 8, 8, generator=g)
    text, pooled = torch.randn(1, 5, 16, generator=g), torch.randn(1, 8, generator=g)
    with torch.no_grad():
        for t in _schedule(steps):
            timestep = t.expand(1)
            uncond = model(hidden_states=z, timestep=timestep, encoder_hidden_states=torch.zeros_like(text),
                           pooled_projections=torch.zeros_like(pooled), return_dict=False)[0]
            cond = model(hidden_states=z, timestep=timestep, encoder_hidden_states=text, pooled_projections=pooled,
                         return_dict=False)[0]
            z = z - 0.01 * (uncond + guidance * (cond - uncond)).reshape(z.shape)
    return z
