"""Module outputs as tuples of tensors: unpacking, sizes and CFG-branch slices. A leaf: no cachekit imports."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from diffusers.utils import BaseOutput

#: A module output as the tuple of its tensors.
Value = tuple[torch.Tensor, ...]


def unpack(output: Any) -> tuple[Value, Callable[[Value], Any]]:
    """Split a module output into its tensors and a function that builds the same kind of output
    from new tensors (a tensor, a tuple of tensors, or a diffusers BaseOutput's first field)."""
    if isinstance(output, torch.Tensor):
        return (output,), _first
    if isinstance(output, tuple) and all(isinstance(t, torch.Tensor) for t in output):
        return output, tuple
    if isinstance(output, BaseOutput):
        key = next(iter(output.keys()))
        return (output[key],), lambda ts: type(output)(**{**output, key: ts[0]})
    raise TypeError(f"cannot cache a module output of type {type(output).__name__}; "
                    "expected a tensor, a tuple of tensors or a diffusers BaseOutput")


def _first(tensors: Value) -> torch.Tensor:
    return tensors[0]


def nbytes(value: Value) -> int:
    """Bytes held by the tensors of ``value``."""
    return sum(t.numel() * t.element_size() for t in value)


def first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    """The first tensor argument of a call (its ``hidden_states``)."""
    for value in (*args, kwargs.get("hidden_states"), *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError("a hooked call has no tensor input")


def select_batch(args: tuple, kwargs: dict, names: Sequence[str], parts: int, keep: Sequence[int]) -> tuple[tuple, dict]:
    """Keep the ``keep`` chunks (of ``parts`` equal ones along dim 0) of every positional tensor and
    of the keyword tensors named in ``names``: the inputs that carry the CFG branches."""

    def pick(value: Any) -> Any:
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            return value
        size = value.shape[0] // parts
        if len(keep) == 1 or list(keep) == list(range(keep[0], keep[-1] + 1)):  # contiguous: a view
            return value[keep[0] * size:(keep[-1] + 1) * size]
        return torch.cat([value[i * size:(i + 1) * size] for i in keep])

    return tuple(pick(a) for a in args), {k: pick(v) if k in names else v for k, v in kwargs.items()}
