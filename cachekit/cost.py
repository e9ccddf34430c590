"""FLOP counting for the cost model: torch's FLOP counter, taught the CPU attention kernel."""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode


def _sdpa_flops(query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int], *args: object,
                out_shape: object = None, **kwargs: object) -> int:
    """Two batched matmuls: Q K^T and (softmax) V."""
    *batch, length, dim = query_shape
    heads = 1
    for size in batch:
        heads *= size
    return 2 * heads * length * key_shape[-2] * (dim + value_shape[-1])


# torch counts SDPA on its CUDA kernels; the CPU flash kernel needs the formula too.
_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def flop_counter() -> FlopCounterMode:
    """A FLOP counter whose ``get_total_flops()`` the runtime reads around each site's call."""
    return FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
