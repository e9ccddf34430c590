"""Counting the FLOPs a call executes: torch's formulas (matmuls, convolutions, attention), the CPU
flash attention kernel, and flex attention at the density of its block mask. A leaf: no cachekit
imports."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch._higher_order_ops.flex_attention import flex_attention
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_flop_count, shape_wrapper

#: Ops whose sizes and strides some tensor subclasses compute in Python: passed through uncounted.
_METADATA = {torch.ops.aten.sym_is_contiguous.default, torch.ops.aten.is_contiguous.default,
             torch.ops.aten.is_contiguous.memory_format, torch.ops.aten.is_strides_like_format.default,
             torch.ops.aten.is_non_overlapping_and_dense.default, torch.ops.aten.size.default,
             torch.ops.aten.sym_size.default, torch.ops.aten.stride.default, torch.ops.aten.sym_stride.default,
             torch.ops.aten.storage_offset.default, torch.ops.aten.sym_storage_offset.default,
             torch.ops.aten.numel.default, torch.ops.aten.sym_numel.default, torch.ops.aten.dim.default,
             torch.ops.prim.layout.default, torch.ops.prim.device.default}


def _sdpa_flops(query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int], *args: object,
                out_shape: object = None, **kwargs: object) -> int:
    """Two batched matmuls: Q K^T and (softmax) V."""
    *batch, length, dim = query_shape
    return 2 * math.prod(batch) * length * key_shape[-2] * (dim + value_shape[-1])


def block_density(block_mask: tuple) -> float:
    """The share of (query block, key block) pairs a flex attention block mask computes, from the
    tuple the flex attention op receives: ``(Q_LEN, KV_LEN, kv_num_blocks, kv_indices,
    full_kv_num_blocks, ..., Q_BLOCK_SIZE, KV_BLOCK_SIZE, mask_mod)``. Reads the block counts from
    the device."""
    kv_length, kv_blocks, full_kv_blocks, kv_block_size = block_mask[1], block_mask[2], block_mask[4], block_mask[-2]
    computed = kv_blocks.sum() + (full_kv_blocks.sum() if full_kv_blocks is not None else 0)
    pairs = kv_blocks.numel() * math.ceil(kv_length / kv_block_size)
    return min(1.0, float(computed) / pairs) if pairs else 1.0


def _flex_flops(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, score_mod: Any, block_mask: tuple,
                *args: object, **kwargs: object) -> int:
    """Dense attention FLOPs times the block mask's density (the blocks a fused kernel skips)."""
    return int(sdpa_flop_count(query.shape, key.shape, value.shape) * block_density(block_mask))


class FlopCounter(TorchDispatchMode):
    """Counts the FLOPs of the ops run inside it (``get_total_flops()``), as torch's
    ``FlopCounterMode`` does, without tracking modules, and counting flex attention, which torch's
    counter cannot run eagerly."""

    supports_higher_order_operators = True

    #: Formulas by op: torch's, on shapes, and ours.
    formulas: dict[Any, Any] = {
        **flop_registry,
        # torch counts SDPA on its CUDA kernels; the CPU flash kernel needs the formula too
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: shape_wrapper(_sdpa_flops),
    }

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def get_total_flops(self) -> int:
        return self.total

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is flex_attention:  # run below this mode (its dense matmuls uncounted), counted as one op
            out = func(*args, **kwargs)
            self.total += _flex_flops(*args, **kwargs)
            return out
        if isinstance(func, torch._ops.HigherOrderOperator):
            return NotImplemented
        if func in _METADATA:
            return func(*args, **kwargs)
        formula = self.formulas.get(func._overloadpacket)
        if formula is None:  # counted through its decomposition where it has one (e.g. linear into addmm)
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out
