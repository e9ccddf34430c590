"""Embedded trained models: ``cachekit.zoo.load("moving-shapes")`` gives a ready diffusers pipeline."""

from __future__ import annotations

from typing import Any

from ..errors import CachekitError

MODELS = ("moving-shapes",)


def load(name: str = "moving-shapes") -> Any:
    """The named embedded model as a diffusers pipeline of its own class, loaded with no network."""
    if name not in MODELS:
        raise CachekitError(f"no embedded model {name!r}; available: {', '.join(MODELS)}")
    from .weights import build_pipeline

    return build_pipeline()
