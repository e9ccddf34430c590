"""Module outputs as tuples of tensors: unpacking, sizes and CFG-branch slices. A leaf: no cachekit imports."""

from __future__ import annotations

import warnings
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
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for value in (*args, kwargs.get("hidden_states"), *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError("a hooked call has no tensor input")


def select_batch(args: tuple, kwargs: dict, names: Sequence[str] | None, parts: int, keep: Sequence[int],
                 where: str = "a site") -> tuple[tuple, dict]:
    """Keep the ``keep`` chunks (of ``parts`` equal ones along dim 0) of the inputs that carry the CFG
    branches: every positional tensor and the keyword tensors (or tuples of them) named in
    ``names``; with ``names`` None, every tensor whose dim 0 is the call's batch (the first
    tensor's), warning about inputs whose dim 0 is another multiple or divisor of it."""
    batch = first_tensor(args, kwargs).shape[0]

    def carries(name: str, value: torch.Tensor, positional: bool) -> bool:
        if names is not None:
            return positional or name in names
        size = value.shape[0]
        if size != batch and size > 1 and (size % batch == 0 or batch % size == 0):
            warnings.warn(f"cachekit: {where}: input '{name}' has {size} rows along dim 0 for a batch of {batch} "
                          f"({parts} CFG branches); passed whole. Declare Site.batch_inputs (or the adapter's "
                          "batch_kwargs) if it carries the branches", stacklevel=6)
        return size == batch

    def pick(name: str, value: Any, positional: bool = False) -> Any:
        if isinstance(value, tuple):  # e.g. a per-sample rotary (cos, sin) pair
            return tuple(pick(name, v, positional) for v in value)
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or not carries(name, value, positional):
            return value
        size = value.shape[0] // parts
        if len(keep) == 1 or list(keep) == list(range(keep[0], keep[-1] + 1)):  # contiguous: a view
            return value[keep[0] * size:(keep[-1] + 1) * size]
        return torch.cat([value[i * size:(i + 1) * size] for i in keep])

    return (tuple(pick(f"argument {i}", a, True) for i, a in enumerate(args)),
            {k: pick(k, v) for k, v in kwargs.items()})


def residual_inputs(params: Sequence[str], args: tuple, kwargs: dict,
                    names: Sequence[str] | None = None) -> list[tuple[str, Any]]:
    """The inputs a residual site's outputs are cached against, output ``k`` against the ``k``-th:
    the inputs ``names`` where given, else the tensor arguments in the module's parameter order
    (then any further keywords)."""
    found = [(name, args[i] if i < len(args) else kwargs.get(name)) for i, name in enumerate(params)]
    found += [(name, value) for name, value in kwargs.items() if name not in params]
    found += [(f"argument {i}", value) for i, value in enumerate(args[len(params):], len(params))]
    if names is not None:
        given = dict(found)
        return [(name, given.get(name)) for name in names]
    return [(name, value) for name, value in found if isinstance(value, torch.Tensor)]


def join(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate equal chunks along dim 0; chunks that lie back to back in one storage (the
    branches of one earlier output) are joined as a view of it, without a copy."""
    first = parts[0]
    ptr, offset, span = first.untyped_storage().data_ptr(), first.storage_offset(), first.shape[0] * first.stride(0)
    for i, part in enumerate(parts[1:], 1):
        if (part.untyped_storage().data_ptr() != ptr or part.storage_offset() != offset + i * span
                or part.stride() != first.stride() or part.shape != first.shape or part.dtype != first.dtype):
            return torch.cat(parts)
    return first.as_strided((first.shape[0] * len(parts), *first.shape[1:]), first.stride(), offset)


class BufferPool:
    """Buffers a run keeps its stored tensors in, recycled across steps until the run ends.

    Module outputs held from one denoising step to a later one are long-lived blocks that land in a
    different place of glibc's heap at each step; the heap's top then shrinks and regrows, and each
    regrowth faults its pages back in (thousands of page faults a run on the tiny benchmark model).
    ``keep`` copies a value into buffers of the same shape and dtype released earlier in the run
    (else into new ones), so the stored tensors stay where they are. A buffer lent out as a module
    output is never recycled. ``free_bytes`` counts the buffers waiting to be taken again.
    """

    def __init__(self) -> None:
        self._free: dict[tuple[torch.Size, torch.dtype], list[torch.Tensor]] = {}
        self._lent: set[int] = set()
        self.free_bytes = 0

    def keep(self, value: Value) -> Value:
        """``value`` copied into buffers of this pool."""
        kept = []
        for tensor in value:
            free = self._free.get((tensor.shape, tensor.dtype))
            if free:
                kept.append(free.pop().copy_(tensor))
                self.free_bytes -= tensor.numel() * tensor.element_size()
            else:
                kept.append(tensor.clone(memory_format=torch.contiguous_format))
        return tuple(kept)

    def lend(self, value: Value) -> None:
        """``value``'s buffers are handed out (as a module output): they will not be recycled."""
        self._lent.update(id(t) for t in value)

    def release(self, value: Value) -> None:
        """``value`` is no longer stored: its buffers may be taken again (a lent one is let go)."""
        for tensor in value:
            if id(tensor) in self._lent:
                self._lent.discard(id(tensor))
            else:
                self._free.setdefault((tensor.shape, tensor.dtype), []).append(tensor)
                self.free_bytes += tensor.numel() * tensor.element_size()

    def clear(self) -> None:
        self._free.clear()
        self._lent.clear()
        self.free_bytes = 0
