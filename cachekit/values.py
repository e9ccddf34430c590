"""Module outputs as tuples of tensors: unpacking, sizes, and the inputs that carry the CFG branches. A leaf:
no cachekit imports."""

from __future__ import annotations

import pathlib
import sys
import warnings
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import diffusers
import torch
from diffusers.utils import BaseOutput

#: A module output as the tuple of its tensors.
Value = tuple[torch.Tensor, ...]


def unpack(output: Any) -> tuple[Value, Callable[[Value], Any]]:
    """Split a module output into its tensors and a function that builds the same kind of output
    from new tensors: a tensor; a tuple or list (nested alike) whose tensors are the values and whose
    other items (``None``, a key/value cache dict) the built output takes as they are; or a diffusers
    BaseOutput whose first field is one of those."""
    if isinstance(output, torch.Tensor):
        return (output,), _first
    if isinstance(output, tuple) and all(isinstance(t, torch.Tensor) for t in output):
        return output, tuple
    if isinstance(output, BaseOutput):
        key = next(iter(output.keys()))
        tensors, inner = unpack(output[key])
        return tensors, lambda ts: type(output)(**{**output, key: inner(ts)})
    if isinstance(output, (tuple, list)):
        found: list[torch.Tensor] = []
        shape = _shape(output, found)
        if found:
            return tuple(found), lambda ts: _build(shape, iter(ts))
    raise TypeError(f"cannot cache a module output of type {type(output).__name__} holding no tensor; "
                    "expected a tensor, a tuple or list holding tensors, or a diffusers BaseOutput of those")


class _Sequence(tuple):
    """A tuple or list in an output's shape: its type and its items' shapes."""


#: A tensor's place in an output's shape.
_SLOT = object()


def _shape(item: Any, found: list[torch.Tensor]) -> Any:
    """``item``'s shape, its tensors appended to ``found`` in order."""
    if isinstance(item, torch.Tensor):
        found.append(item)
        return _SLOT
    if type(item) in (tuple, list):
        return _Sequence((type(item), *(_shape(x, found) for x in item)))
    return item


def _build(shape: Any, tensors: Iterator[torch.Tensor]) -> Any:
    if shape is _SLOT:
        return next(tensors)
    if type(shape) is _Sequence:
        return shape[0](_build(x, tensors) for x in shape[1:])
    return shape


def _first(tensors: Value) -> torch.Tensor:
    return tensors[0]


def nbytes(value: Value) -> int:
    """Bytes held by the tensors of ``value``."""
    return sum(t.numel() * t.element_size() for t in value)


def first_tensor(args: tuple, kwargs: dict, name: str = "hidden_states") -> torch.Tensor:
    """The first tensor argument of a call: its first positional argument, else the keyword ``name``
    (either may be a list of per-item tensors: its first), else the first tensor passed."""
    for value in (args[0] if args else None, kwargs.get(name)):
        if isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            return value[0]
        if isinstance(value, torch.Tensor):
            return value
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError("a hooked call has no tensor input")


class BatchInputs:
    """Which inputs of one site's calls carry the CFG branches along dim 0, resolved once per site.

    The rule: when only some of the branches a batched call carries compute, every tensor input
    whose dim 0 is the call's batch (the dim 0 of its first tensor, ``hidden_states``) is cut to
    those branches, whether it is passed by position or keyword, alone or inside a tuple, list or
    dict. Declarations only settle what dim 0 cannot tell: ``carry`` names inputs that carry the
    branches with another dim 0 (folded with another axis), ``shared`` inputs that never do though
    their dim 0 may equal or divide the batch (a rotary table with one row per token). Any other
    input whose dim 0 is a multiple or divisor of the batch is passed whole with a warning, once.
    ``axes`` names inputs that carry the branches along another dim (a key/value cache's dim 1).
    ``params`` are the module's forward parameters, which name positional arguments.
    """

    __slots__ = ("where", "params", "carry", "shared", "axes", "warned")

    def __init__(self, where: str, params: Sequence[str] = (), carry: Iterable[str] = (),
                 shared: Iterable[str] = (), axes: Mapping[str, int] | None = None) -> None:
        self.where = where
        self.params = tuple(params)
        self.carry = frozenset(carry)
        self.shared = frozenset(shared)
        self.axes = dict(axes or {})
        #: Inputs already warned about (each once per session).
        self.warned: set[str] = set()

    def select(self, args: tuple, kwargs: dict, parts: int, keep: Sequence[int]) -> tuple[tuple, dict]:
        """``args`` and ``kwargs`` with the inputs that carry the branches cut to the ``keep``
        chunks of ``parts`` equal ones along dim 0."""
        batch = first_tensor(args, kwargs).shape[0]
        contiguous = len(keep) == 1 or list(keep) == list(range(keep[0], keep[-1] + 1))
        params = self.params

        def pick(name: str, value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                if value.dim() == 0 or name in self.shared:
                    return value
                axis = self.axes.get(name, 0)
                if axis:
                    return _cut(value, axis, batch, parts, keep, contiguous, f"{self.where}: input '{name}'")
                size = value.shape[0]
                if size != batch and name not in self.carry:
                    if size > 1 and (size % batch == 0 or batch % size == 0) and name not in self.warned:
                        self.warned.add(name)
                        _warn_outside(
                            f"cachekit: {self.where}: input '{name}' has {size} rows along dim 0 for a batch of {batch} "
                            f"({parts} CFG branches); passed whole. Declare Site.batch_inputs (or the adapter's "
                            "batch_kwargs) if it carries the branches, Site.shared_inputs (or shared_kwargs) if not")
                    return value
                if size % parts:
                    raise ValueError(f"{self.where}: input '{name}' has {size} rows along dim 0, which cannot be cut "
                                     f"into {parts} CFG branches")
                rows = size // parts
                if contiguous:  # a view
                    return value[keep[0] * rows:(keep[-1] + 1) * rows]
                return torch.cat([value[i * rows:(i + 1) * rows] for i in keep])
            if isinstance(value, (tuple, list)):  # e.g. a per-sample rotary (cos, sin) pair
                return type(value)(pick(name, v) for v in value)
            if isinstance(value, dict):
                return {k: pick(name, v) for k, v in value.items()}
            return value

        return (tuple(pick(params[i] if i < len(params) else f"argument {i}", a) for i, a in enumerate(args)),
                {k: pick(k, v) for k, v in kwargs.items()})


def _cut(value: torch.Tensor, axis: int, batch: int, parts: int, keep: Sequence[int], contiguous: bool,
         where: str) -> torch.Tensor:
    """``value`` cut to the ``keep`` chunks of ``parts`` along ``axis``, which must be the batch's."""
    if value.dim() <= axis or value.shape[axis] != batch:
        raise ValueError(f"{where} carries the CFG branches along dim {axis}, but has shape {tuple(value.shape)} "
                         f"for a batch of {batch}")
    rows = batch // parts
    if contiguous:  # a view
        return value.narrow(axis, keep[0] * rows, len(keep) * rows)
    return torch.cat([value.narrow(axis, i * rows, rows) for i in keep], dim=axis)


_LIBRARIES = tuple(str(pathlib.Path(m.__file__).parent) for m in (torch, diffusers)) + (str(pathlib.Path(__file__).parent),)


def _warn_outside(message: str) -> None:
    """Warn at the first frame outside cachekit, torch and diffusers (the pipeline call)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARIES):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


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
