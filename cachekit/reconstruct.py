"""Reconstruction kernels: build a site's output from stored outputs of earlier steps.

A kernel takes the source tensors (one element of each source node's output) and keyword
parameters from the plan, and returns the reconstructed tensor.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import torch

from .registry import hookimpl

#: Output layouts the frequency-domain kernels read; "BFHWC" is channels-last video; "BLC" is a token
#: sequence (B, F*H*W, C) whose (F, H, W) grid the adapter reads from each call (``Adapter.frame_grid``);
#: "BTC" is a sequence in time alone (B, T, C), one token a step (an audio stream): each token is a
#: frame of 1 x 1, whose whole spectrum is the low band; "CFHW" is one item's video without a batch
#: axis (a model taking and returning a list of per-item tensors).
LAYOUTS = ("BCFHW", "BFCHW", "BFHWC", "BCHW", "BLC", "BTC", "CFHW")


def linear(sources: list[torch.Tensor], weight: float = 1.0, scale: float = 1.0) -> torch.Tensor:
    """First-order extrapolation from the two most recent outputs ``[F_prev, F_last]``:
    ``F_last + weight * scale * (F_last - F_prev)``."""
    previous, last = sources
    return last + (last - previous) * (weight * scale)


def taylor(sources: list[torch.Tensor], steps: tuple[int, ...] = (), at: int = 0,
           dtype: str | None = None) -> torch.Tensor:
    """Taylor forecast (TaylorSeer) at step ``at`` from the outputs ``sources`` computed at ``steps``
    (oldest first): order ``len(sources) - 1``. The derivative estimates are built as TaylorSeer
    updates them, one computed output at a time: ``d[j+1] = (d_new[j] - d_old[j]) / (s_new - s_old)``;
    the forecast is ``sum_j d[j] * (at - s_last)**j / j!``. ``dtype`` (a torch dtype's name) stores
    the estimates in that dtype after each update, as diffusers' ``taylor_factors_dtype`` does: a new
    difference is taken in the output's dtype against the stored (rounded) estimate, and the
    forecast is summed in the output's dtype."""
    cast = getattr(torch, dtype) if dtype is not None else None
    factors: list[torch.Tensor] = []
    for i, value in enumerate(sources):
        new = [value]
        for j in range(len(factors)):
            new.append((new[j] - factors[j].to(value.dtype)) / (steps[i] - steps[i - 1]))
        factors = [f.to(cast) for f in new] if cast is not None else new
    kind = sources[-1].dtype
    offset, out = at - steps[-1], factors[0].to(kind)
    for order in range(1, len(factors)):
        out = out + factors[order].to(kind) * (offset**order / math.factorial(order))
    return out


taylor.uses_steps = True  # the runtime passes the sources' steps and the current one


def to_frames(x: torch.Tensor, layout: str, grid: tuple[int, int, int] | None = None) -> torch.Tensor:
    """(B, C, F, H, W), (B, F, C, H, W), (B, F, H, W, C), tokens (B, F*H*W, C) on ``grid``, a time
    sequence (B, T, C) (a time step is a 1 x 1 frame) or one item (C, F, H, W) -> (B*F, C, H, W);
    (B, C, H, W) unchanged."""
    if layout == "CFHW":
        return x.transpose(0, 1)
    if layout == "BTC":
        return x.flatten(0, 1)[:, :, None, None]
    if layout == "BLC":
        x = x.unflatten(1, grid)
    if layout in ("BLC", "BFHWC"):
        x = x.permute(0, 1, 4, 2, 3)
    elif layout == "BCFHW":
        x = x.permute(0, 2, 1, 3, 4)
    return x.flatten(0, 1) if layout != "BCHW" else x


def from_frames(x: torch.Tensor, layout: str, batch: int) -> torch.Tensor:
    if layout == "CFHW":
        return x.transpose(0, 1)
    if layout == "BTC":
        return x[:, :, 0, 0].unflatten(0, (batch, -1))
    if layout != "BCHW":
        x = x.unflatten(0, (batch, -1))
    if layout in ("BLC", "BFHWC"):
        x = x.permute(0, 1, 3, 4, 2)
        return x.flatten(1, 3) if layout == "BLC" else x
    return x.permute(0, 2, 1, 3, 4) if layout == "BCFHW" else x


@functools.lru_cache(maxsize=16)
def low_pass_disk(height: int, width: int, radius_divisor: int, device: torch.device) -> torch.Tensor:
    """The centred disk of radius min(H, W) // radius_divisor, as a boolean (H, W) mask."""
    radius = min(height, width) // radius_divisor
    rows = torch.arange(height, device=device).view(-1, 1)
    cols = torch.arange(width, device=device).view(1, -1)
    return (cols - width // 2) ** 2 + (rows - height // 2) ** 2 <= radius**2


def _spectrum(x: torch.Tensor) -> torch.Tensor:
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))


def frequency_bands(x: torch.Tensor, radius_divisor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred 2-D spectrum over (H, W) split into the low-pass disk and the rest."""
    spectrum = _spectrum(x)
    low = low_pass_disk(*x.shape[-2:], radius_divisor, x.device)
    return spectrum * low, spectrum * ~low


def _weighted(delta: torch.Tensor, weight: float | tuple[float, ...]) -> torch.Tensor:
    """``delta * weight``; a tuple of factors is applied one after another (compounding)."""
    for factor in weight if isinstance(weight, tuple) else (weight,):
        delta = delta * factor
    return delta


def _product(weight: float | tuple[float, ...]) -> float:
    return weight if not isinstance(weight, tuple) else functools.reduce(lambda a, b: a * b, weight, 1.0)


def cfg_fft(sources: list[torch.Tensor], w_low: float | tuple[float, ...], w_high: float | tuple[float, ...],
            radius_divisor: int = 5, layout: str = "BCFHW", exact_bands: bool = False,
            grid: tuple[int, int, int] | None = None) -> torch.Tensor:
    """CFG-Cache (FasterCache Eqs. 9-11): the unconditional output rebuilt from the current
    conditional one and the frequency-domain bias stored at the last full step.

    ``sources = [uncond_full, cond_full, cond_now]``;
    ``uncond = IFFT(w_low * dLF + LF(cond_now) + w_high * dHF + HF(cond_now)).real``, a weight given
    as a tuple of per-step factors compounding them in order. By linearity this is
    ``cond_now + IFFT(W * FFT(uncond_full - cond_full))`` with W = w_low inside the disk and w_high
    outside: one FFT and one inverse. ``exact_bands`` evaluates the equation term by term in
    diffusers' order instead (four transforms), which reproduces its rounding bit for bit. ``grid``
    is the (F, H, W) of a token-sequence ("BLC") layout.
    """
    uncond_full, cond_full, cond_now = sources
    batch = cond_now.shape[0]
    if exact_bands:
        low_u, high_u = frequency_bands(to_frames(uncond_full, layout, grid), radius_divisor)
        low_c, high_c = frequency_bands(to_frames(cond_full, layout, grid), radius_divisor)
        low_now, high_now = frequency_bands(to_frames(cond_now, layout, grid), radius_divisor)
        spectrum = (_weighted(low_u - low_c, w_low) + low_now) + (_weighted(high_u - high_c, w_high) + high_now)
        rebuilt = torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).real
        return from_frames(rebuilt, layout, batch).to(cond_now.dtype)
    delta = _spectrum(to_frames(uncond_full - cond_full, layout, grid))
    disk = low_pass_disk(*delta.shape[-2:], radius_divisor, delta.device)
    weights = torch.full(disk.shape, _product(w_high), dtype=delta.real.dtype, device=delta.device)
    weights[disk] = _product(w_low)
    bias = torch.fft.ifft2(torch.fft.ifftshift(delta * weights, dim=(-2, -1))).real
    return cond_now + from_frames(bias, layout, batch).to(cond_now.dtype)


def rebuild(kernel: Callable[..., torch.Tensor], sources: Sequence[tuple[torch.Tensor, ...]], params: dict[str, Any],
            grid: Callable[[torch.Tensor], tuple[int, int, int]]) -> tuple[torch.Tensor, ...]:
    """A site's output rebuilt by ``kernel`` from its stored ``sources`` (each a tuple of the site's
    output tensors), tensor by tensor. ``params``' layout may be a tuple, one layout per output tensor;
    a token layout ("BLC") gets the (F, H, W) that ``grid`` reads for its tensor."""
    layouts = params.get("layout")
    each = isinstance(layouts, tuple)
    rebuilt = []
    for k in range(len(sources[0])):
        kwargs = {**params, "layout": layouts[k]} if each else params
        if kwargs.get("layout") == "BLC":
            kwargs = {**kwargs, "grid": grid(sources[0][k])}
        rebuilt.append(kernel([source[k] for source in sources], **kwargs))
    return tuple(rebuilt)


@hookimpl
def cachekit_kernels() -> dict:
    return {"linear": linear, "cfg_fft": cfg_fft, "taylor": taylor}
