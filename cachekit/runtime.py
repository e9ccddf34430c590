"""The runtime: one session's hooks installed and removed, its runs started and ended (by the run
clock), and its plans built once per schedule and kept (least recently used out).

What a hooked call does inside a run is ``execution``'s; where the hooks sit is ``hooks``'.
"""

from __future__ import annotations

import contextlib
import functools
import pathlib
import sys
import threading
import time
import warnings
from typing import Any, Callable, Iterator, Sequence

import diffusers
import torch

from .clock import RunClock, RunStart, Tick
from .cost import CostModel
from .errors import AdapterError, EnableError
from .execution import Executor
from .hooks import Installation, signal_reducer
from .plan import CompiledPlan, Prediction, StepPlan
from .planner import plan_run
from .policy import COMPUTE, Policy
from .registry import blaming_policies, registry
from .run import Run
from .sites import Site
from .values import BufferPool, first_tensor

#: The most plans a session keeps (least recently used first out): a server taking step counts
#: from requests, or a flow pipeline whose timesteps shift with resolution, plans without end.
PLAN_CACHE_SIZE = 8

#: Where the frames of a hooked call come from; a warning names the first frame outside them.
_LIBRARIES = tuple(str(pathlib.Path(m.__file__).parent) for m in (torch, diffusers)) + (str(pathlib.Path(__file__).parent),)


def _warn(message: str) -> None:
    """Warn at the caller's line: the first frame outside cachekit, torch and diffusers (the
    pipeline call, or the user's direct call of the transformer)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARIES):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


class Runtime:
    """Installs the hooks of one session, starts and ends its runs, and keeps its plans."""

    def __init__(self, adapter: Any, policies: Sequence[Policy], sites: Sequence[Site], clock: RunClock,
                 profile: bool = False) -> None:
        self.adapter = adapter
        self.policies = tuple(policies)
        self.sites = tuple(sites)
        self.clock = clock
        self.cost = CostModel(adapter, self.suspended, timed=profile)
        self.split = adapter.cfg_layout == "split"
        self.executor = Executor(adapter, policies, sites)
        self.hooks = Installation()
        #: The last run that finished, and the plan of the latest run started.
        self.last_run: Run | None = None
        #: The finished runs of the latest pipeline call: one per denoising loop it ran (a pipeline
        #: that samples in stages or sections runs several, each with its own plan and cache).
        self.call_runs: list[Run] = []
        self._call_number = -1
        self.plan: StepPlan | None = None
        self.plans_built = 0
        self._plans: dict[tuple, tuple[StepPlan, CompiledPlan, dict[str, Callable]]] = {}
        self._suspended = False
        #: The thread whose calls the session serves, and the lock under which another thread takes it.
        self._owner: int | None = None
        self._claim_lock = threading.Lock()
        self._warned: set[str] = set()
        self._idle: dict[int, tuple[str, ...]] = {}

    @property
    def run(self) -> Run | None:
        """The run in progress, if any."""
        return self.executor.run

    @run.setter
    def run(self, run: Run | None) -> None:
        self.executor.run = run

    # -- plans ----------------------------------------------------------------------------------

    def compiled(self, num_steps: int, timesteps: Sequence[float] | None,
                 branches: tuple[str, ...]) -> tuple[StepPlan, CompiledPlan, dict[str, Callable]]:
        """The plan, its flat table and its kernels (resolved here, once), built once per schedule and branches."""
        key = (num_steps, tuple(timesteps) if timesteps is not None else None, branches)
        entry = self._plans.pop(key, None)
        if entry is None:
            with blaming_policies():  # a plugin's failure names the plugin
                plan = plan_run(self.policies, self.sites, branches, num_steps, timesteps, self.adapter.cfg_layout,
                                [group for _, group in self.adapter.step_calls(branches)])
            compiled = plan.compile(self.adapter.call_order, self.split)
            kernels = {name: registry().get("kernel", name) for name in compiled.kernels}  # unknown: fails here
            entry = (plan, compiled, kernels)
            self.plans_built += 1
            self._evict(PLAN_CACHE_SIZE - 1)
        self._plans[key] = entry  # the most recently used last
        return entry

    def _evict(self, keep: int) -> None:
        """Drop the least recently used plans, with their predictions and warnings, down to ``keep``."""
        while len(self._plans) > keep:
            plan, compiled, _ = self._plans.pop(next(iter(self._plans)))
            self._idle.pop(id(compiled), None)
            self.cost.forget(plan)

    def predict(self, plan: StepPlan) -> Prediction | None:
        """A dry run's prediction for ``plan`` (a plan of this runtime) on the adapter's example inputs."""
        key = (plan.num_steps, plan.timesteps, plan.branches)
        return self.cost.dry_run(plan, self.compiled(*key)[2])

    # -- hooks ----------------------------------------------------------------------------------

    def install(self) -> None:
        self.hooks.install(self.adapter, self.sites, self, self.executor)

    def hooked_modules(self) -> list[torch.nn.Module]:
        return self.hooks.modules()

    def uninstall(self) -> None:
        self.hooks.remove()
        self.release()

    def set_context(self, context: Any) -> None:
        """The pipeline's ``cache_context`` (names the branch of the next denoiser call)."""
        self.clock.context = context

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Calls made inside pass straight through, outside any run."""
        self._suspended, run, self.run = True, self.run, None
        try:
            yield
        finally:
            self._suspended, self.run = False, run

    # -- run lifecycle --------------------------------------------------------------------------

    def _begin(self, start: RunStart) -> Run:
        if getattr(self.adapter.model, "_cache_config", None) is not None:
            raise EnableError(f"diffusers' own cache was enabled on {type(self.adapter.model).__name__} after "
                              "cachekit.enable; both would cache: call transformer.disable_cache() or cachekit.disable()")
        plan, compiled, kernels = self.compiled(*start)
        self.plan = plan
        if self.clock.pipe is None or self.clock.call_number != self._call_number:  # a pipeline call's first loop
            self.call_runs, self._call_number = [], self.clock.call_number  # (a bare model's runs: each its own)
        self.run = Run(plan, compiled, kernels)
        self.run.plans = (len(self._plans), self.plans_built)
        self.run.reduce = signal_reducer(self.adapter.model)
        return self.run

    def _finish(self, run: Run) -> None:
        run.ended = time.perf_counter()
        run.clear()
        if run.prediction is not None:
            decided = None if run.compiled.is_static else run.executed()  # an online plan: from the decisions it took
            if decided is not None:
                run.prediction = self.cost.predict(run.plan, run.signature, decided)
            run.compute_fraction = self.cost.compute_fraction(run.plan, run.signature, decided)
        self.run, self.last_run = None, run
        self.call_runs.append(run)
        run.warnings = self._idle_warnings(run)
        for message in run.warnings:
            if message not in self._warned:  # once per session, as Python shows a warning once per line
                self._warned.add(message)
                _warn(message)

    def _idle_warnings(self, run: Run) -> tuple[str, ...]:
        """``idle_policy_warnings`` for ``run``; when no policy's plan for it holds anything but
        compute, they depend on the plan alone and are kept with it."""
        compiled = run.compiled
        if any(kinds - {COMPUTE} for kinds in compiled.policy_kinds.values()):
            return tuple(idle_policy_warnings(self.policies, run))
        key = id(compiled)  # compiled plans live as long as they are in self._plans (evicted with them)
        if key not in self._idle:
            self._idle[key] = tuple(idle_policy_warnings(self.policies, run))
        return self._idle[key]

    def pipeline_ended(self) -> None:
        """The pipeline call ended with its run still active (it was interrupted, or another
        transformer ran the last steps): the run ends with the steps it ran, kept for the report."""
        if self.run is not None and self.run.shape is not None:
            self._finish(self.run)
        self.release()

    def release(self) -> None:
        """Drop the current run, if any, and what it holds: the next call starts afresh."""
        if self.run is not None:
            self.run.clear()
        self.run = None
        self.clock.stop()

    # -- calls ----------------------------------------------------------------------------------

    def denoiser_call(self, forward: Callable, args: tuple, kwargs: dict) -> Any:
        run = self.run
        if self._suspended or (run is not None and run.present):  # profiling, or a nested call
            return forward(*args, **kwargs)
        if not self.adapter.is_step_call(args, kwargs):  # e.g. filling a key/value cache: no step of a run
            return forward(*args, **kwargs)
        if self._owner != threading.get_ident():
            run = self._claim()
        try:
            tick = self.clock.tick(args, kwargs)
            if self.clock.notice is not None:  # a hand-written loop that does not follow the declared steps
                _warn(self.clock.notice)
                self.clock.notice = None
            if tick is None:  # outside a run, or a call inside the pipeline that is not the run's
                if run is not None and not self.clock.active:
                    self.release()
                return forward(*args, **kwargs)
            if tick.start is not None:
                if run is not None:
                    run.clear()  # a run cut short: the pipeline started another
                run = self._begin(tick.start)
            elif tick.step != run.step:
                run.advance(tick.step)
            out = self._denoise(run, tick, forward, args, kwargs)
        except BaseException:
            self.release()
            raise
        if self.clock.tock():
            self._finish(run)
            if self.clock.notice is not None:  # the run's timesteps disagreed with where it placed them
                _warn(self.clock.notice)
                self.clock.notice = None
        return out

    def _claim(self) -> Run | None:
        """This thread's call takes the session, unless another thread is inside a pipeline call (or,
        bare, a run) of it: a session serves one call at a time. A run left by another thread's call
        that ended is dropped."""
        with self._claim_lock:
            owner = self._owner
            if owner is not None and self.clock.calling(owner):
                raise EnableError(f"this session is serving a call in another thread ({owner}); a session serves one "
                                  "call at a time: serialize the calls, or give each thread its own pipeline "
                                  "(copy.deepcopy(pipe) is the plain model; enable the copy)")
            if self.run is not None:
                self.release()
            self._owner = threading.get_ident()
            return self.run

    def _denoise(self, run: Run, tick: Tick, forward: Callable, args: tuple, kwargs: dict) -> Any:
        hidden = first_tensor(args, kwargs, self.adapter.latent_input)
        present = tick.branches or run.plan.branches
        if run.shape is None:  # the run's first call: its inputs fix the profile and the prediction
            return self._first_call(run, hidden, present, forward, args, kwargs)
        # per branch: calls of one run may carry different numbers of branches (LTX-2: 2, then 1)
        if run.caching and (hidden.shape[1:] != run.shape[0][1:] or hidden.shape[0] != run.rows * len(present)):
            _warn(f"cachekit: input shape changed mid-run from {tuple(run.shape[0])} to {tuple(hidden.shape)}; caching "
                  "is off for the rest of this run (the next run plans afresh)")
            run.caching = False
            run.clear()
        if not run.caching:
            return forward(*args, **kwargs)
        with run.serving(present):
            return self.executor.dispatch(run, 0, run.row[0], forward, args, kwargs)

    def _first_call(self, run: Run, hidden: torch.Tensor, present: tuple[str, ...], forward: Callable,
                    args: tuple, kwargs: dict) -> Any:
        if hidden.shape[0] % len(present):
            raise EnableError(
                f"this call's batch of {hidden.shape[0]} cannot carry the CFG branches {', '.join(present)} "
                f"along dim 0; enable a bare transformer with cfg=False unless each call batches [uncond, cond]")
        run.shape = (hidden.shape, hidden.dtype, hidden.device)
        run.rows = hidden.shape[0] // len(present)
        run.pool = BufferPool() if hidden.device.type == "cpu" else None
        signature = run.signature
        call = functools.partial(self.executor.dispatch, run, 0, run.row[0], forward, args, kwargs)
        with run.serving(present):
            if self.cost.profiled(signature, run.plan.branches):
                out = call()
            else:
                out = self._profile(run, signature, call, forward, args, kwargs, len(present))
        run.prediction = self.cost.predict(run.plan, signature)
        if "BLC" in self.sites[0].layouts:  # the token grid, read now (an adapter may read it from the device)
            with contextlib.suppress(AdapterError):  # tokens on no grid: said where a kernel needs the grid
                self.adapter.frame_grid(args, kwargs)
        return out

    def _profile(self, run: Run, signature: tuple, call: Callable, forward: Callable, args: tuple, kwargs: dict,
                 per: int) -> Any:
        """The run's first call, ``call``, profiled; the seconds spent besides ``call`` itself go
        to ``run.profile_seconds``."""
        spent = [0.0]

        def timed_call() -> Any:
            begin = time.perf_counter()
            try:
                return call()
            finally:
                spent[0] = time.perf_counter() - begin

        begin = time.perf_counter()
        out = self.cost.profile(signature, run.plan, run.kernels, timed_call, forward, args, kwargs, per)
        run.profile_seconds = time.perf_counter() - begin - spent[0]
        return out


def idle_policy_warnings(policies: Sequence[Policy], run: Run) -> list[str]:
    """A policy that made no decision other than compute in the run is named, with the reason."""
    planned = run.compiled.policy_kinds
    may_act = {p.name for p in policies if planned.get(p.name, frozenset()) - {COMPUTE}}
    active = {run.ops[step][index].actions[run.ops[step][index].branches.index(branches[0])].policy
              for step, index, branches, kind in run.log if kind != COMPUTE} if may_act else set()
    messages = []
    for policy in policies:
        if policy.name in active:
            continue
        kinds = planned.get(policy.name, frozenset())
        if not policy.branches(run.plan.branches):
            why = ("the run has no uncond branch (guidance is off), so every step computed normally"
                   if "uncond" not in run.plan.branches else f"the run has none of the branches it acts on (the "
                   f"run's: {', '.join(run.plan.branches)}), so every step computed normally")
        elif not kinds:
            why = (f"it claimed no node: its window holds no step of this {run.plan.num_steps}-step run where its "
                   "sites are called, or a higher-priority policy took them")
        elif kinds <= {COMPUTE}:
            why = "its plan for this run computes every node it claims (interval 1, or a window too short to reuse)"
        elif "online" in kinds:
            why = "its run-time signal chose compute at every online node"
        else:
            why = "its nodes were never called (an enclosing site was not computed, or caching was off)"
        messages.append(f"policy '{policy.name}' made no decision other than compute in this run: {why}")
    return messages
