"""The state of one denoising run: where it is, what it stores, and the log of what it executed.

A run lives from its first denoiser call to its last; the report reads a finished one through the
accessors here.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Sequence

import torch

from .plan import CompiledPlan, Prediction, StepPlan
from .policy import NodeKey, signal_value
from .values import BufferPool, Value, nbytes


class Executed(NamedTuple):
    """One executed op: its step, its site's index in the plan, the branches it served, its action kind."""

    step: int
    site: int
    branches: tuple[str, ...]
    kind: str


class Run:
    """State of one denoising run: position, stored tensors, decision log. Dropped when the run ends."""

    def __init__(self, plan: StepPlan, compiled: CompiledPlan, kernels: dict[str, Callable]) -> None:
        self.plan = plan
        self.compiled = compiled
        self.ops = compiled.ops
        self.kernels = kernels
        self.step = 0
        self.row = self.ops[0]
        #: Inside a denoiser call: the CFG branches its nested site calls carry; () outside.
        self.present: tuple[str, ...] = ()
        self.store: dict[NodeKey, Value] = {}
        self.bytes = 0
        self.peak_bytes = 0
        #: The peak of the cache's bytes plus the pool's free buffers (CPU).
        self.peak_held_bytes = 0
        #: Every executed op, in order.
        self.log: list[Executed] = []
        #: Output builders per site index (and per (stack index, block position) for the stack's blocks).
        self.templates: dict[Any, Callable[[Value], Any]] = {}
        #: The step each online slot's value was computed at (slots shift as online nodes compute).
        self.slot_steps: dict[NodeKey, int] = {}
        #: Online decisions taken and the seconds their ``decide`` calls took (signals included).
        self.decisions = 0
        self.decide_seconds = 0.0
        #: Decisions of step-scoped online policies: (policy, step, branches) -> reuse.
        self.step_decisions: dict[tuple[str, int, tuple[str, ...]], bool] = {}
        #: The block stack's pass through the current denoiser call (execution's), and the first block's inputs.
        self.stack: Any = None
        self.head_inputs: Value | None = None
        self.head_outputs: Value | None = None
        #: The current denoiser call's inputs and the branches it carries, in batch order.
        self.call: tuple[tuple, dict, tuple[str, ...]] | None = None
        #: Online policies' state per (site index, branch) and per (policy, branch), and its bytes.
        self.online_state: dict[tuple[int, str], dict] = {}
        self.online_shared: dict[tuple[str, str], dict] = {}
        self._state_bytes: dict[int, int] = {}
        #: The denoiser input's (shape, dtype, device) at the run's first call, and its rows per
        #: branch; a later call of another shape per branch turns caching off for the rest of the run.
        self.shape: tuple[torch.Size, torch.dtype, torch.device] | None = None
        self.rows = 0
        self.caching = True
        #: Where stored tensors live on CPU (set at the first call); None elsewhere, where the
        #: stored tensors are the outputs themselves.
        self.pool: BufferPool | None = None
        self.prediction: Prediction | None = None
        #: perf_counter() at each step's first call, and at the end of the run's last call.
        self.step_starts: list[float] = [time.perf_counter()]
        self.ended: float | None = None
        #: Seconds the first call spent profiling the model (its extra forwards and kernel timings),
        #: left out of ``step_seconds``.
        self.profile_seconds = 0.0
        #: Executed FLOPs over the uncached run's (set when the run finishes).
        self.compute_fraction: float | None = None
        #: The policies that made no decision other than compute, named with the reason (set at the end).
        self.warnings: tuple[str, ...] = ()
        #: The session's plans held and built when the run started.
        self.plans = (0, 0)
        #: How an online signal becomes the float every rank decides on (set when the run starts).
        self.reduce: Callable[[Any, Any], float] = signal_value

    def advance(self, step: int) -> None:
        self.step, self.row = step, self.ops[step]
        self.step_starts.append(time.perf_counter())

    def put(self, key: NodeKey, value: Value) -> None:
        self.drop(key)
        if self.pool is not None:
            value = self.pool.keep(value)
        self.store[key] = value
        self.bytes += nbytes(value)

    def shift(self, keys: Sequence[NodeKey], value: Value) -> None:
        """An online node computed: its slots ``keys`` (oldest first) move down one and the newest
        takes ``value``."""
        for older, newer in zip(keys, keys[1:]):
            self.drop(older)
            if newer in self.store:
                self.store[older] = self.store.pop(newer)
                self.slot_steps[older] = self.slot_steps.pop(newer, newer[0])
        self.put(keys[-1], value)
        self.slot_steps[keys[-1]] = self.step

    def drop(self, key: NodeKey) -> None:
        value = self.store.pop(key, None)
        if value is not None:
            self.bytes -= nbytes(value)
            if self.pool is not None:
                self.pool.release(value)

    def note_peak(self) -> None:
        """Record the bytes held between ops: the cache's tensors, and with them the recycled buffers."""
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        self.peak_held_bytes = max(self.peak_held_bytes, self.bytes + (self.pool.free_bytes if self.pool else 0))

    def count_state(self, *states: dict) -> None:
        """Count the tensors online policies hold in ``states`` in the cache bytes."""
        for state in states:
            held = sum(nbytes(_tensors(v)) for v in state.values())
            self.bytes += held - self._state_bytes.get(id(state), 0)
            self._state_bytes[id(state)] = held

    def clear(self) -> None:
        self.store.clear()
        if self.pool is not None:
            self.pool.clear()
        self.online_state.clear()
        self.online_shared.clear()
        self.slot_steps.clear()
        self.step_decisions.clear()
        self.stack = None
        self.head_inputs = self.head_outputs = None
        self.call = None
        self._state_bytes.clear()
        self.templates.clear()
        self.bytes = 0

    @property
    def signature(self) -> tuple:
        """The first call's input shape, dtype and device: the key of the cost model's profile."""
        return (tuple(self.shape[0]), *self.shape[1:])

    def record(self, site: int, branches: tuple[str, ...], kind: str) -> None:
        """Log an executed op of the current step at the plan's site ``site``."""
        self.log.append(Executed(self.step, site, branches, kind))

    def executed(self) -> dict[NodeKey, str]:
        """The action each node took, from the log (online nodes: the decision)."""
        sites = self.plan.sites
        return {(entry.step, sites[entry.site].name, branch): entry.kind for entry in self.log for branch in entry.branches}

    def history(self, site: str) -> list[tuple[int, tuple[str, ...], str]]:
        """(step, branches, kind) of each op executed at the site named ``site``, in order."""
        index = self.plan.site_index[site]
        return [(entry.step, entry.branches, entry.kind) for entry in self.log if entry.site == index]

    def stored(self) -> tuple[Value, ...]:
        """The values the cache holds now."""
        return tuple(self.store.values())

    def serving(self, branches: tuple[str, ...]) -> "Run":
        """``with run.serving(branches):`` a denoiser call carrying ``branches``; its nested site calls
        see them as ``present``, and the call's stack pass and inputs are dropped when it returns.
        (The run is its own context manager: a generator-based one costs more on the hot path.)"""
        self.present = branches
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        self.present, self.stack, self.call = (), None, None

    @property
    def step_seconds(self) -> tuple[float, ...]:
        """Seconds per step, without the profiling, which the run's first call (at step 0) does."""
        ends = [*self.step_starts, self.ended] if self.ended is not None else self.step_starts
        seconds = [b - a for a, b in zip(ends, ends[1:])]
        if seconds:
            seconds[0] -= self.profile_seconds
        return tuple(seconds)


def _tensors(value: Any) -> Value:
    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, (tuple, list)):
        return tuple(v for v in value if isinstance(v, torch.Tensor))
    return ()
