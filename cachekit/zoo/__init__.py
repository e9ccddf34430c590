"""Embedded trained models: ``cachekit.zoo.load("moving-shapes")`` gives a ready diffusers pipeline.

- ``moving-shapes``: a 4-layer ``LatteTransformer3DModel`` (v-prediction, DDIM; batched CFG) in a ``LattePipeline``;
- ``moving-shapes-wan``: a 4-layer ``WanTransformer3DModel`` (rectified flow, Euler; split CFG, the
  transformer called for "cond" then "uncond") in a ``WanPipeline``.

Both are trained on the same clips and prompts (:mod:`cachekit.zoo.moving_shapes`).
"""

from __future__ import annotations

from typing import Any

from ..errors import CachekitError

MODELS = ("moving-shapes", "moving-shapes-wan")
#: The classifier-free guidance each model samples best with (what ``cachekit run`` uses by default).
GUIDANCE = {"moving-shapes": 1.5, "moving-shapes-wan": 2.0}


def load(name: str = "moving-shapes") -> Any:
    """The named embedded model as a diffusers pipeline of its own class, loaded with no network."""
    if name not in MODELS:
        raise CachekitError(f"no embedded model {name!r}; available: {', '.join(MODELS)}")
    from .weights import build_pipeline, weights_path

    return build_pipeline(weights_path(name))
