"""The run clock: which run, step and CFG branch each denoiser call belongs to, learned from the calls
themselves. It changes no object the user owns: it reads the pipeline's scheduler, the call's
timestep argument and diffusers' ``cache_context``, and never wraps a method.

A pipeline run is one ``pipe(...)`` call: denoiser calls made from inside the pipeline's
``__call__`` belong to it, calls from anywhere else compute normally. Within it the clock locates
each call's timestep in the schedule the pipeline set (``pipe.scheduler.timesteps``, read at the
run's first call): first by identity (the pipeline passes a view of the schedule's own tensor),
else by nearest value. A run starts at the first call, wherever it lies in the schedule
(``strength < 1`` starts mid-schedule: the run is the steps that follow), or when a call does not
follow the previous one; a new schedule or a swapped scheduler starts a new run. A timestep that
is not in the schedule makes the run count calls instead. The branches of a call in the split
layout are those of the call the ``cache_context`` name the pipeline gives it names (a branch's
name, or a call group's), else the next call in the adapter's call order. The run ends after its
last step's calls.
"""

from __future__ import annotations

import inspect
import math
import pathlib
import sys
from typing import Any, NamedTuple, Sequence

import torch

from .sites import BRANCHES, branch_order


class RunStart(NamedTuple):
    """What a run is planned for: its steps, their timesteps (None when unknown) and its branches."""

    num_steps: int
    timesteps: tuple[float, ...] | None
    branches: tuple[str, ...]


class Tick(NamedTuple):
    """Where one denoiser call lies: its step of the run, the branch it carries (None: several, see
    ``branches``), the run it starts (None when it continues one), and the branches it carries along
    dim 0 in batch order (empty: every branch of the run, batched)."""

    step: int
    branch: str | None
    start: RunStart | None
    branches: tuple[str, ...] = ()


def _call_codes(pipe: Any) -> frozenset:
    """The code objects of ``type(pipe).__call__`` and the ``__call__`` of its bases, undecorated."""
    codes = set()
    for cls in type(pipe).__mro__:
        fn = cls.__dict__.get("__call__")
        code = getattr(inspect.unwrap(fn), "__code__", None) if fn is not None else None
        if code is not None:
            codes.add(code)
    return frozenset(codes)


def _timestep_position(model: torch.nn.Module, name: str) -> int | None:
    """The positional index of the ``name`` parameter of ``model``'s forward, if it has one."""
    names = [p.name for p in inspect.signature(type(model).forward).parameters.values()][1:]
    return names.index(name) if name in names else None


#: torch's own frames, left out of a call site (compiled and eager calls pass through different ones).
_TORCH = str(pathlib.Path(torch.__file__).parent)


def _close(a: float, b: float, integer: bool = False) -> bool:
    """Equal up to a reduced-precision cast (bfloat16 keeps 8 bits of mantissa), or, for ``b`` read
    from an integer tensor, up to the cast's truncation (1.39 passed as 1)."""
    return abs(a - b) <= 1e-2 * max(1.0, abs(a)) or (integer and b == math.trunc(a))


class RunClock:
    """Follows the runs of one session: ``tick`` before each denoiser call, ``tock`` after it."""

    def __init__(self, model: torch.nn.Module, cfg_layout: str, call_order: Sequence[str], pipe: Any = None,
                 cfg_active: Any = None, steps: int | None = None, timesteps: Sequence[float] | None = None,
                 cfg: bool | Sequence[str] = False, timestep_input: str = "timestep",
                 calls: Any = None, loop_steps: Any = None) -> None:
        """``cfg_active(pipe)``: whether the pipeline's call runs CFG (its branches are then
        ``BRANCHES``, else "cond"), or the tuple of its branches. ``cfg`` (a bare model): the same, as
        a value. ``calls(branches)``: the denoiser calls of one step (``Adapter.step_calls``); None:
        one call per branch of ``call_order`` (split), one call carrying them all (batched).
        ``loop_steps(pipe)``: the steps of a loop that does not walk its schedule (``Adapter.loop_steps``)."""
        self.pipe = pipe
        self.split = cfg_layout == "split"
        self.call_order = tuple(call_order)
        self._cfg_active = cfg_active
        self._calls = calls
        self._loop_steps = loop_steps
        self._codes = _call_codes(pipe) if pipe is not None else frozenset()
        self._timestep_name = timestep_input
        self._timestep_at = _timestep_position(model, timestep_input)
        self._bare = RunStart(steps, tuple(timesteps) if timesteps is not None else None,
                              _branches(cfg, self.call_order)) if steps is not None else None
        #: A bare model's hand-written loop, followed by its timestep values; a message for the user
        #: (taken by the runtime) when it does not follow the declared steps.
        self._loop = _Loop()
        self.notice: str | None = None
        #: diffusers' CacheContext of the current call, set by ``transformer.cache_context(...)``.
        self.context: Any = None
        self.active = False
        self._scheduler: Any = None
        self._schedule: torch.Tensor | None = None
        self._values: tuple[float, ...] = ()
        #: The schedule's data pointer, bytes between elements, length, dtype and device.
        self._start, self._stride, self._length = 0, 1, 0
        self._dtype: torch.dtype | None = None
        self._device: torch.device | None = None
        #: The data pointer of the schedule element the next call of the run views (-1: unknown).
        self._expected = -1
        self._locating = False
        self._depth = 1  # of the pipeline's __call__ below _inside_pipeline, at the last run's start
        #: The latest run's call site: the pipeline call's frame, the code of the frames between it
        #: and tick (torch's left out) and its depth below tick. A call from elsewhere (a preview in a
        #: step callback, a direct call after the pipeline call died) is not the run's. The frame is
        #: held (an id could be reused by the next call's frame) until a run starts in another call.
        self._run_frame, self._run_path, self._run_depth = None, (), 0
        #: Counts the pipeline calls runs started in: the runs of one call share a number.
        self._call_number = 0
        self._run_schedule: torch.Tensor | None = None  # the schedule it was set in: a new pipeline call sets another
        self._index = self._step = self._count = self._num_steps = 0
        #: The run's calls of one step (split): the branches each carries; and the call each
        #: cache_context name names.
        self._groups: tuple[tuple[str, ...], ...] = ()
        self._named: dict[str, int] = {}
        #: Denoiser calls per step: one per call group in the split layout, else one.
        self._per_step = 1
        #: (schedule index, timestep tensor) of the calls placed by position, checked at the run's end.
        self._placed: list[tuple[int, torch.Tensor]] = []

    @property
    def call_number(self) -> int:
        """The number of the pipeline call the latest run belongs to (a new one per call; 0 for a bare model)."""
        return self._call_number

    def stop(self) -> None:
        """The run is over (finished, cut short or abandoned): the next call starts afresh."""
        self.active = False
        self._placed = []
        self._scheduler = self._schedule = None
        self._expected = -1

    # -- per call -------------------------------------------------------------------------------

    def tick(self, args: tuple, kwargs: dict) -> Tick | None:
        """Where this denoiser call lies; None when it belongs to no run (compute normally)."""
        if self.pipe is None:
            if self._loop.restarts(self, args, kwargs):
                self.stop()  # a hand-written loop started again before its declared steps were done
            if not self.active:
                return self._begin(self._bare, 0, locating=False)
            return self._follow(None)
        scheduler = self.pipe.scheduler
        schedule = getattr(scheduler, "timesteps", None)
        name = self._timestep_name
        timestep = kwargs[name] if name in kwargs else self._positional_timestep(args)
        same = self.active and scheduler is self._scheduler and schedule is self._schedule
        if same and type(timestep) is torch.Tensor and timestep.data_ptr() == self._expected and self._from_run_call():
            return self._next()  # the call the run expects next: a view of its next schedule element
        viewed = self._view_index(timestep) if same else None
        if viewed is not None and self._from_run_call():  # a view of the run's schedule, from the run's caller
            tick = self._follow(timestep, viewed)
            if tick is not None:
                return tick
        if not self._inside_pipeline():
            self.stop()  # a pipeline call that ended early leaves nothing active
            return None
        if self._elsewhere_in_run_call(schedule):
            return None  # e.g. a preview in a step callback: computes plainly, the run goes on
        if not isinstance(schedule, torch.Tensor) or schedule.dim() != 1 or len(schedule) == 0:
            self.stop()
            return None
        if same:
            tick = self._follow(timestep, by_position=self._from_run_call())
            if tick is not None:
                return tick
        values = tuple(float(v) for v in schedule.tolist())
        # the same schedule set again, seen from the run's call (another thread called the pipeline): the run goes on
        again = (self.active and scheduler is self._scheduler and values == self._values
                 and self._call_site() == (self._run_frame, self._run_path))
        self._scheduler, self._schedule = scheduler, schedule
        self._values, self._run_schedule = values, schedule
        stride = schedule.stride(0) * schedule.element_size()
        self._start, self._stride, self._length = schedule.data_ptr(), max(stride, 1), len(schedule) if stride > 0 else 0
        self._dtype, self._device = schedule.dtype, schedule.device
        if again:
            tick = self._follow(timestep)
            if tick is not None:
                return tick
        index = self._locate(timestep, ())
        start = 0 if index is None else index
        frame = self._run_frame
        (self._run_frame, self._run_path), self._run_depth = self._call_site(), self._depth
        self._call_number += self._run_frame is not frame
        branches = _branches(self._cfg_active(self.pipe), self.call_order)
        steps = len(self._values) - start
        loop = self._loop_steps(self.pipe) if self._loop_steps is not None else None
        if loop is not None and loop > steps:  # a loop over other timesteps than the schedule's: its calls are counted
            return self._begin(RunStart(loop, None, branches), 0, locating=False)
        steps = steps if loop is None else loop  # fewer: the loop leaves the schedule's last values out
        return self._begin(RunStart(steps, self._values[start:start + steps], branches), start,
                           locating=index is not None)

    def tock(self) -> bool:
        """After a denoiser call of the run: True when it was the run's last (the run ends)."""
        if self._step == self._num_steps - 1 and self._count >= self._per_step:
            self._check_positions()
            self.stop()
            return True
        return False

    def _check_positions(self) -> None:
        """Compare the timesteps of the calls placed by position with the schedule, all at once (one
        read from the device a run); a notice for the user where they disagree."""
        placed, self._placed = self._placed, []
        if not placed:
            return
        got = torch.stack([t.detach().reshape(-1)[0].double() for _, t in placed]).tolist()
        wrong = [(i, v) for (i, t), v in zip(placed, got) if not _close(self._values[i], v, not t.is_floating_point())]
        if wrong:
            index, value = wrong[0]
            self.notice = (f"cachekit: {len(wrong)} denoiser call(s) of the run that just ended were placed on the step "
                           f"after the previous call's, but their timesteps are not the schedule's there (schedule "
                           f"element {index}: {value:g} instead of {self._values[index]:g}); the run's decisions may "
                           "belong to other steps: does the pipeline call the transformer in schedule order?")

    # -- internals ------------------------------------------------------------------------------

    def _begin(self, start: RunStart, index: int, locating: bool) -> Tick:
        self.active, self._locating = True, locating
        self._index, self._step, self._count, self._num_steps = index, 0, 0, start.num_steps
        if self._calls is not None:
            calls = self._calls(start.branches)
        else:
            order = tuple(b for b in self.call_order if b in start.branches)
            calls = tuple((b, (b,)) for b in order) if self.split else ((None, order),)
        self._groups = tuple(group for _, group in calls)
        # a call is named by its own name, else by the name of a branch it carries
        self._named = {b: i for i, group in enumerate(self._groups) for b in group}
        self._named.update({name: i for i, (name, _) in enumerate(calls) if name is not None})
        self._per_step = len(self._groups) if self.split else 1
        return self._tick(0, start)

    def _next(self) -> Tick:
        """The position after the previous call's: the same step's next branch, else the next step."""
        if self._count >= self._per_step:
            self._index, self._step, self._count = self._index + 1, self._step + 1, 0
        return self._tick(self._step, None)

    def _tick(self, step: int, start: RunStart | None) -> Tick:
        carried = self._branch()
        if carried is None:
            return Tick(step, None, start)
        return Tick(step, carried[0] if len(carried) == 1 else None, start, carried)

    def _follow(self, timestep: Any, index: int | None = None, by_position: bool = False) -> Tick | None:
        """The next position of the run (``index``: the call's, when known), or None when this call
        does not follow the previous one. ``by_position`` (a call from the run's own call site): a
        timestep tensor that views no schedule element is placed where it follows the previous call
        without reading its value, which the run's end checks for every such call at once."""
        same_step = self._count < self._per_step
        if self._locating:
            if (index is None and by_position and isinstance(timestep, torch.Tensor) and timestep.numel()
                    and self._view_index(timestep) is None):
                index = self._index if same_step else self._index + 1
                if index < len(self._values):
                    self._placed.append((index, timestep))
                else:
                    index = None
            if index is None:
                index = self._locate(timestep, (self._index, self._index + 1) if same_step else (self._index + 1,))
            if index == self._index + 1:
                same_step = False
            elif index != self._index or not same_step:
                return None
        elif not same_step and self._step + 1 >= self._num_steps:
            return None
        if not same_step:
            self._index, self._step, self._count = self._index + 1, self._step + 1, 0
        return self._tick(self._step, None)

    def _branch(self) -> tuple[str, ...] | None:
        """The branches of this call (split layout; None: batched, every branch of the run): those of
        the call its cache_context name names, else of the next call in the call order. It also sets
        the schedule element the next call is expected to view."""
        self._count += 1
        if self._locating:
            index = self._index + (self._count >= self._per_step)
            self._expected = self._start + index * self._stride if index < self._length else -1
        if not self.split:
            return None
        call = self._named.get(getattr(self.context, "name", None))
        if call is None:
            call = min(self._count - 1, len(self._groups) - 1)
        return self._groups[call]

    def _inside_pipeline(self) -> bool:
        """Whether the enabled pipeline's ``__call__`` is on the stack (looked for first at the depth
        where the last run found it)."""
        try:
            frame = sys._getframe(self._depth)
        except ValueError:
            frame = None
        if frame is not None and frame.f_code in self._codes and frame.f_locals.get("self") is self.pipe:
            return True
        frame, depth = sys._getframe(1), 1
        while frame is not None:
            if frame.f_code in self._codes and frame.f_locals.get("self") is self.pipe:
                self._depth = depth
                return True
            frame, depth = frame.f_back, depth + 1
        return False

    # The helpers below are called from tick, as _inside_pipeline is: depths count from tick's caller.

    def _from_run_call(self) -> bool:
        """Whether the run's pipeline call is at the run's depth on this call's stack (the fast check)."""
        try:
            return sys._getframe(self._run_depth) is self._run_frame
        except ValueError:
            return False

    def _call_site(self, nested: int = 0) -> tuple[Any, tuple]:
        """The pipeline call's frame that ``_inside_pipeline`` found, and the code of the
        frames between it and tick, torch's own left out (compiled calls pass through varying ones).
        ``nested``: the frames between tick and this call's caller."""
        frame, path = sys._getframe(2 + nested), []
        for _ in range(self._depth - 2):
            code = frame.f_code  # by name: torch.compile runs code objects of its own
            if not code.co_filename.startswith(_TORCH):
                path.append((code.co_filename, code.co_name))
            frame = frame.f_back
        return frame, tuple(path)

    def _elsewhere_in_run_call(self, schedule: Any) -> bool:
        """Whether this call comes from the latest run's pipeline call (found by ``_inside_pipeline``;
        its schedule still set) through other code than the run's calls (a step callback): it is no
        step of the run."""
        if schedule is not self._run_schedule:
            return False
        frame, path = self._call_site(1)
        return frame is self._run_frame and path != self._run_path

    def calling(self, thread: int) -> bool:
        """Whether ``thread`` is inside a call of the enabled pipeline (a bare model: whether a run is active)."""
        if self.pipe is None:
            return self.active
        frame = sys._current_frames().get(thread)
        while frame is not None:
            if frame.f_code in self._codes and frame.f_locals.get("self") is self.pipe:
                return True
            frame = frame.f_back
        return False

    def _positional_timestep(self, args: tuple) -> Any:
        at = self._timestep_at
        return args[at] if at is not None and at < len(args) else None

    def _view_index(self, timestep: Any) -> int | None:
        """The index of the schedule's element that ``timestep`` views (the pipelines pass
        ``t.expand(...)``), read from pointers alone; None when it is no view of the schedule."""
        if not isinstance(timestep, torch.Tensor) or timestep.dtype != self._dtype or timestep.device != self._device:
            return None
        # live allocations do not overlap: a pointer into the schedule's memory is a view of it
        index, rest = divmod(timestep.data_ptr() - self._start, self._stride)
        return index if rest == 0 and 0 <= index < self._length else None

    def _locate(self, timestep: Any, expected: Sequence[int]) -> int | None:
        """The index of ``timestep`` in the run's schedule: the position of the schedule's element it
        views, else the nearest value (an expected index first); None when it is not there."""
        values = self._values
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() == 0:
                return None
            index = self._view_index(timestep)
            if index is not None:
                return index
            value = float(timestep.reshape(-1)[0])
        elif isinstance(timestep, (int, float)) and not isinstance(timestep, bool):
            value = float(timestep)
        else:
            return None
        for index in expected:
            if 0 <= index < len(values) and _close(values[index], value):
                return index
        nearest = min(range(len(values)), key=lambda i: abs(values[i] - value))
        return nearest if _close(values[nearest], value) else None


def _branches(cfg: bool | Sequence[str], call_order: Sequence[str]) -> tuple[str, ...]:
    """A run's branches from ``cfg``: True the CFG branches, False "cond", or the branches named."""
    if isinstance(cfg, (tuple, list)):
        return branch_order(cfg, call_order)
    return BRANCHES if cfg else ("cond",)


class _Loop:
    """Follows the timestep values of a bare model's hand-written loop, where the run is the declared
    ``num_inference_steps`` calls (per branch, split). A loop runs its timesteps one way (down, or
    up); a value that goes back the other way starts a new loop, and a run that ended with its
    declared steps while the loop goes on the same way means the loop has more steps than declared.
    Either way the user is told what to pass. Values are read only from Python numbers and CPU
    tensors: nothing waits for a device."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.direction = 0.0
        self.warned = False

    def restarts(self, clock: RunClock, args: tuple, kwargs: dict) -> bool:
        """Whether this call starts a new loop while the clock's run is still active; sets the clock's
        notice when the loop does not follow the declared steps."""
        value = _value(kwargs[clock._timestep_name] if clock._timestep_name in kwargs else clock._positional_timestep(args))
        if value is None:
            return False
        last, self.last = self.last, value
        if last is None or _close(value, last):
            return False
        change = value - last
        if clock.active and clock._step == 0 and not self.direction:
            self.direction = change  # the loop's way, from its first two values
            return False
        if not self.direction:
            return False
        steps = clock._bare.num_steps
        if change * self.direction < 0:  # back the other way: a new loop
            if clock.active:
                self._notice(clock, f"a hand-written loop started again after {clock._step + 1} of the "
                                    f"{steps} steps enable declared; the run starts afresh")
                return True
            return False
        if not clock.active:  # the run ended, yet the loop goes on
            self._notice(clock, f"the hand-written loop goes on past the {steps} steps enable declared; "
                                "the next calls start another run")
        return False

    def _notice(self, clock: RunClock, message: str) -> None:
        if not self.warned:
            self.warned = True
            clock.notice = (f"cachekit: {message}: pass the loop's step count as num_inference_steps (and its "
                            "timesteps, if a window is given in timestep units) to cachekit.enable")


def _value(timestep: Any) -> float | None:
    """A timestep's value, if it can be read without waiting for a device."""
    if isinstance(timestep, (int, float)) and not isinstance(timestep, bool):
        return float(timestep)
    if isinstance(timestep, torch.Tensor) and timestep.device.type == "cpu" and timestep.numel():
        return float(timestep.reshape(-1)[0])
    return None
