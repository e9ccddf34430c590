"""Reconstruction kernels: build a site's output from stored outputs of earlier steps."""

from __future__ import annotations

import torch

from .registry import hookimpl


def linear(sources: list[torch.Tensor], weight: float = 1.0, scale: float = 1.0) -> torch.Tensor:
    """First-order extrapolation from the two most recent computed outputs ``[F_prev, F_last]``:
    ``F_last + weight * scale * (F_last - F_prev)``; ``scale`` = step distance / producer spacing."""
    previous, last = sources
    return last + (weight * scale) * (last - previous)


@hookimpl
def cachekit_kernels() -> dict:
    return {"linear": linear}
