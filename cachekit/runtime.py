"""The runtime: instance-level hooks on the planned sites, the run's lifecycle (started and ended by
the run clock), and the per-run state that executes a plan.

The hot path is a list look-up per hooked call: nothing here touches networkx.
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

import attrs
import diffusers
import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import StateManager
from torch._C._dynamo.eval_frame import get_eval_frame_callback, set_eval_frame
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .adapter import forward_parameters
from .clock import RunClock, RunStart, Tick
from .copies import plain_state
from .cost import CostModel
from .errors import AdapterError, EnableError
from .plan import CompiledPlan, Prediction, StepPlan
from .planner import build_plan
from .policy import COMPUTE, ONLINE, RECONSTRUCT, REUSE, Action, NodeKey, OnlineContext, Policy, signal_value
from .registry import blaming_policies, registry
from .sites import STACK, Site
from .values import BufferPool, Value, first_tensor, join, nbytes, residual_inputs, unpack

HOOK_NAME = "cachekit"
#: The block stack's hooks on its blocks, and on the first block when it is kept before the stack.
STACK_HOOK, HEAD_HOOK = "cachekit.stack", "cachekit.head"
HOOK_NAMES = (HOOK_NAME, STACK_HOOK, HEAD_HOOK)

#: The name prefixes of diffusers' context-parallel hooks (they split a module's inputs along the
#: sequence and gather its outputs).
PARALLEL_HOOKS = ("cp_input---", "cp_output---")

#: Permutations taking a video layout to (B, C, F, H, W).
_TO_BCFHW = {"BCFHW": (0, 1, 2, 3, 4), "BFCHW": (0, 2, 1, 3, 4), "BFHWC": (0, 4, 1, 2, 3)}

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
        #: (step, site index, branches, action kind) of every executed op.
        self.log: list[tuple[int, int, tuple[str, ...], str]] = []
        #: Output builders per site index (and per (stack index, block position) for the stack's blocks).
        self.templates: dict[Any, Callable[[Value], Any]] = {}
        #: The step each online slot's value was computed at (slots shift as online nodes compute).
        self.slot_steps: dict[NodeKey, int] = {}
        #: Online decisions taken and the seconds their ``decide`` calls took (signals included).
        self.decisions = 0
        self.decide_seconds = 0.0
        #: Decisions of step-scoped online policies: (policy, step, branches) -> reuse.
        self.step_decisions: dict[tuple[str, int, tuple[str, ...]], bool] = {}
        #: The block stack's pass through the current denoiser call, and the first block's inputs.
        self.stack: _StackPass | None = None
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

    def executed(self) -> dict[NodeKey, str]:
        """The action each node took, from the log (online nodes: the decision)."""
        sites = self.plan.sites
        return {(step, sites[index].name, branch): kind for step, index, branches, kind in self.log for branch in branches}

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


class _Hook(ModelHook):
    """A cachekit hook. It is registered in the module's diffusers ``HookRegistry``, which composes it
    with other hooks and removes it; ``install`` then sets the module's forward to ``direct`` while it is
    the outermost hook, since the registry's wrapper around it would only pass values through."""

    def __init__(self, call: Callable[[Callable, tuple, dict], Any]) -> None:
        super().__init__()
        self.call = call  # call(original forward, args, kwargs)

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.direct(*args, **kwargs)

    @functools.cached_property
    def direct(self) -> Callable:
        """The hooked forward, with the original forward's signature (``__wrapped__``)."""
        call, forward = self.call, self.fn_ref.original_forward
        is_compiling = torch.compiler.is_dynamo_compiling

        def direct(*args: Any, **kwargs: Any) -> Any:
            if is_compiling():  # the bookkeeping runs eager, the forward it calls is compiled
                return _compiled_site(call, forward, args, kwargs)
            return call(forward, args, kwargs)

        return functools.update_wrapper(direct, forward)


def _enter_compiled_site(call: Callable, forward: Callable, args: tuple, kwargs: dict) -> Any:
    """A hooked call met inside a compiled region: ``call`` (the run's bookkeeping) runs eager, and
    the module's own ``forward``, when ``call`` computes it, is compiled by the region's compiler."""
    compiler = get_eval_frame_callback()

    def compiled_forward(*args: Any, **kwargs: Any) -> Any:
        if _get_current_dispatch_mode() is not None:  # counting a call's FLOPs: dynamo would skip the code for good
            return forward(*args, **kwargs)
        outer = set_eval_frame(compiler)
        try:
            return forward(*args, **kwargs)
        finally:
            set_eval_frame(outer)

    return _eager(call)(compiled_forward, args, kwargs)


_eager = torch.compiler.disable
#: What torch.compile(fullgraph=True) says when it meets a hooked module.
FULLGRAPH = ("cachekit's hooks run the run's bookkeeping outside the graph, so a module cachekit hooks cannot be "
             "compiled with fullgraph=True: compile it with fullgraph=False, or compile with fullgraph=True the "
             "modules below cachekit's hooks (session.hooked_modules() lists the hooked ones)")
_compiled_site = torch.compiler.disable(_enter_compiled_site, recursive=False, reason=FULLGRAPH)


class _ContextTap(StateManager):
    """Receives the ``CacheContext`` that ``transformer.cache_context(...)`` sets on stateful hooks."""

    def __init__(self, clock: RunClock) -> None:
        self.clock = clock

    def set_context(self, context: Any) -> None:
        self.clock.context = context


class _DenoiserHook(_Hook):
    _is_stateful = True  # so that diffusers hands it the pipeline's cache_context

    def __init__(self, runtime: "Runtime") -> None:
        super().__init__(runtime.denoiser_call)
        self.runtime = runtime
        self.tap = _ContextTap(runtime.clock)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        """diffusers calls this when a pipeline call ends: a run still active ends here."""
        self.runtime.pipeline_ended()
        return module


class Runtime:
    """Installs the hooks of one session, starts and ends its runs, and executes the current run's plan."""

    def __init__(self, adapter: Any, policies: Sequence[Policy], sites: Sequence[Site], clock: RunClock,
                 profile: bool = False) -> None:
        self.adapter = adapter
        self.policies = tuple(policies)
        self.policies_by_name = {p.name: p for p in policies}
        self.sites = tuple(sites)
        self.clock = clock
        self.cost = CostModel(adapter, self.suspended, timed=profile)
        self.split = adapter.cfg_layout == "split"
        self.run: Run | None = None
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
        self._installed: list[tuple[torch.nn.Module, bool, str]] = []
        #: Per site: which inputs carry the CFG branches, cut when only some of them compute.
        self.batch_inputs = [adapter.batch_inputs_of(s) for s in self.sites]
        #: Per residual site: its module's forward parameters, to match outputs with inputs.
        self.params = {i: forward_parameters(adapter.module(s))[0] for i, s in enumerate(self.sites) if s.residual}
        #: The block stack, if planned: its index, each block's forward parameters and output count,
        #: the input names its outputs match, and the first block's parameters when kept before it.
        self.stack_index = next((i for i, s in enumerate(self.sites) if s.kind == STACK), None)
        stack = self.sites[self.stack_index] if self.stack_index is not None else None
        self.stack_names = stack.residual if stack is not None and isinstance(stack.residual, tuple) else None
        self.stack_params = [forward_parameters(adapter.model.get_submodule(path))[0] for path in stack.span] if stack else []
        self.stack_outputs = [0] * len(self.stack_params)
        self.head_params = forward_parameters(adapter.model.get_submodule(stack.head[0]))[0] if stack and stack.head else ()

    # -- plans ----------------------------------------------------------------------------------

    def compiled(self, num_steps: int, timesteps: Sequence[float] | None,
                 branches: tuple[str, ...]) -> tuple[StepPlan, CompiledPlan, dict[str, Callable]]:
        """The plan, its flat table and its kernels (resolved here, once), built once per schedule and branches."""
        key = (num_steps, tuple(timesteps) if timesteps is not None else None, branches)
        entry = self._plans.pop(key, None)
        if entry is None:
            with blaming_policies():  # a plugin's failure names the plugin
                plan = build_plan(self.policies, self.sites, branches, num_steps, timesteps, self.adapter.cfg_layout,
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
        adapter = self.adapter
        for index, site in enumerate(self.sites):
            if site.kind == STACK:
                continue
            for module in adapter.modules(site):
                hook = _DenoiserHook(self) if index == 0 else _Hook(functools.partial(self.site_call, index))
                self._register(module, hook, HOOK_NAME)
        if self.stack_index is not None:  # outermost on its blocks: a skipped pass never reaches their sites
            stack = self.sites[self.stack_index]
            for position, path in enumerate(stack.span):
                for module in adapter.modules(attrs.evolve(stack, module_path=path)):
                    self._register(module, _Hook(functools.partial(self.stack_call, self.stack_index, position)),
                                   STACK_HOOK)
            for position, path in enumerate(stack.head):  # the first records its inputs, the last its outputs
                first, last = position == 0, position == len(stack.head) - 1
                if first or last:
                    for module in adapter.modules(attrs.evolve(stack, module_path=path)):
                        self._register(module, _Hook(functools.partial(self.head_call, first, last)), HEAD_HOOK)

    def _register(self, module: torch.nn.Module, hook: _Hook, name: str) -> None:
        """Register ``hook`` on ``module``: outermost, or inside diffusers' context-parallel hooks
        when the module has them (its site then sees its sequence shard in and out, whichever of
        cachekit and ``enable_parallelism`` came first)."""
        created = not hasattr(module, "_diffusers_hook")
        registry = HookRegistry.check_if_exists_or_initialize(module)
        order = registry._hook_order
        first = next((i for i, other in enumerate(order) if other.startswith(PARALLEL_HOOKS)), len(order))
        outer = [(other, registry.hooks[other]) for other in order[first:]]
        for other, _ in reversed(outer):  # unwrapped down to where the parallel hooks begin
            registry.remove_hook(other, recurse=False)
        registry.register_hook(hook, name)
        for other, held in outer:
            registry.register_hook(held, other)
        if not outer:
            module.forward = hook.direct  # the outermost hook: the registry's wrapper is skipped
        module.__getstate__ = functools.partial(plain_state, module, HOOK_NAMES, hook.direct)  # copies are plain
        self._installed.append((module, created, name))

    def hooked_modules(self) -> list[torch.nn.Module]:
        return [module for module, _, _ in self._installed]

    def uninstall(self) -> None:
        for module, created, name in reversed(self._installed):
            hooks = module._diffusers_hook
            hooks.remove_hook(name, recurse=False)
            module.__dict__.pop("__getstate__", None)
            if not hooks.hooks:  # nothing else wraps it: back to the class's own forward
                module.__dict__.pop("forward", None)
                if created:  # registrations on one module are undone latest first: this was its first
                    del module._diffusers_hook
            self._installed.pop()
        self.release()

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
            executed = run.executed()
            if not run.plan.is_static:  # an online plan is predicted from the decisions it took
                run.prediction = self.cost.predict(run.plan, run.signature, executed)
            run.compute_fraction = self.cost.compute_fraction(run.plan, run.signature, executed)
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
        hidden = first_tensor(args, kwargs)
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
        run.present = present
        try:
            return self._dispatch(run, 0, run.row[0], forward, args, kwargs)
        finally:
            run.present, run.stack, run.call = (), None, None

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
        op = run.row[0]
        run.present = present
        try:
            if self.cost.profiled(signature, run.plan.branches):
                out = self._dispatch(run, 0, op, forward, args, kwargs)
            else:
                out = self._profile(run, signature, lambda: self._dispatch(run, 0, op, forward, args, kwargs),
                                    forward, args, kwargs, len(present))
        finally:
            run.present, run.stack, run.call = (), None, None
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

    def site_call(self, index: int, forward: Callable, args: tuple, kwargs: dict) -> Any:
        run = self.run
        if run is None or not run.present:  # outside a denoiser call of a caching run
            return forward(*args, **kwargs)
        op = run.row[index]
        if op.passthrough:
            if op.branches:  # () when planned skip: called only because an online parent computed
                run.log.append((run.step, index, run.present, COMPUTE))
            return forward(*args, **kwargs)
        return self._dispatch(run, index, op, forward, args, kwargs)

    def _dispatch(self, run: Run, index: int, op: Any, forward: Callable, args: tuple, kwargs: dict) -> Any:
        some = _carried(op, run.present)  # split layout: this call carries some of the step's branches
        if index == 0:  # the denoiser call, for online decisions that read its inputs
            run.call = (args, kwargs, tuple(op.branches[i] for i in some) if some else op.branches)
        if op.passthrough:
            run.log.append((run.step, index, tuple(op.branches[i] for i in some) if some else op.branches, COMPUTE))
            return forward(*args, **kwargs)
        if some:
            branches, actions, store, frees = (tuple(getattr(op, f)[i] for i in some)
                                               for f in ("branches", "actions", "store", "frees"))
        else:
            branches, actions, store, frees = op.branches, op.actions, op.store, op.frees
        out = self._execute(run, index, branches, actions, store, forward, args, kwargs)
        for keys in frees:
            for key in keys:
                run.drop(key)
        run.note_peak()
        return out

    # -- online decisions -----------------------------------------------------------------------

    def _decide(self, run: Run, index: int, branches: tuple, actions: tuple, args: tuple,
                kwargs: dict) -> tuple[list[str], dict[int, OnlineContext]]:
        """Each branch's kind once online nodes are decided, and the context each observed branch is
        observed with. Branches of one policy decide one by one (scope ``branch``) or together."""
        kinds = [a.kind for a in actions]
        contexts: dict[int, OnlineContext] = {}
        groups: dict[str, list[int]] = {}
        for i, action in enumerate(actions):
            if action.kind == ONLINE or action.observe:
                groups.setdefault(action.policy, []).append(i)
        for name, members in groups.items():
            policy = self.policies_by_name[name]
            parts = [[i] for i in members] if policy.scope == "branch" else [members]
            for part in parts:
                context = self._online_context(run, index, policy, branches, part, args, kwargs)
                for i in part:
                    contexts[i] = context
                if all(actions[i].kind != ONLINE for i in part):
                    continue
                if any(actions[i].observe for i in part):  # nothing to fall back on for one of them
                    reuse = False
                elif policy.scope == "step":
                    key = (name, run.step, context.branches)
                    if key not in run.step_decisions:
                        run.step_decisions[key] = _timed_decide(run, policy, context)
                    reuse = run.step_decisions[key]
                else:
                    reuse = _timed_decide(run, policy, context)
                for i in part:
                    if actions[i].kind == ONLINE:
                        kinds[i] = (RECONSTRUCT if actions[i].kernel else REUSE) if reuse else COMPUTE
        return kinds, contexts

    def _online_context(self, run: Run, index: int, policy: Policy, branches: tuple, part: list[int],
                        args: tuple, kwargs: dict) -> OnlineContext:
        """The context of the branches ``part`` (indices into the ``branches`` this call carries) at site ``index``."""
        n, site = len(branches), self.sites[index]
        if len(part) < n:
            args, kwargs = self.batch_inputs[index].select(args, kwargs, n, part)
        heads = (run.head_inputs, run.head_outputs) if site.kind == STACK and run.head_inputs is not None else (None, None)
        if heads[0] is not None and len(part) < n:
            heads = tuple(tuple(torch.cat([t.chunk(n)[i] for i in part]) if len(part) > 1 else t.chunk(n)[part[0]]
                                for t in head) for head in heads)
        names = tuple(branches[i] for i in part)
        key = "+".join(names)
        timesteps = run.plan.timesteps
        return OnlineContext(run.step, timesteps[run.step] if timesteps is not None else None, key, site, args,
                             kwargs, run.online_state.setdefault((index, key), {}),
                             run.online_shared.setdefault((policy.name, key), {}), run.plan.num_steps, names, *heads,
                             reduce=run.reduce,
                             call_latents=functools.partial(self._latents, run.call, names) if run.call else None)

    def _latents(self, call: tuple[tuple, dict, tuple[str, ...]], names: tuple[str, ...]) -> torch.Tensor | None:
        """The denoiser call's first tensor (its noisy latents) as (B, C, F, H, W), cut to the branches
        ``names``; None where the denoiser's layout is unknown and the tensor is not 5-D."""
        args, kwargs, carried = call
        hidden, layout = first_tensor(args, kwargs), self.sites[0].layouts[0]
        if layout == "BLC":
            hidden = hidden.unflatten(1, self.adapter.frame_grid(args, kwargs)).permute(0, 4, 1, 2, 3)
        elif layout in _TO_BCFHW or (layout is None and hidden.ndim == 5):
            hidden = hidden.permute(_TO_BCFHW.get(layout, (0, 1, 2, 3, 4)))
        elif layout == "BCHW":
            hidden = hidden.unsqueeze(2)
        else:
            return None
        if len(names) == len(carried):
            return hidden
        chunks = hidden.chunk(len(carried))
        return torch.cat([chunks[carried.index(b)] for b in names]) if len(names) > 1 else chunks[carried.index(names[0])]

    def _observe(self, run: Run, contexts: dict[int, OnlineContext], actions: tuple, index: int,
                 chunks: dict[int, Value]) -> None:
        """Hand each observed context its branches' computed outputs (joined along dim 0 when several)."""
        seen: set[int] = set()
        for i, context in contexts.items():
            if id(context) in seen or i not in chunks:
                continue
            seen.add(id(context))
            members = [j for j, c in contexts.items() if c is context and j in chunks]
            output = chunks[members[0]] if len(members) == 1 else tuple(join(ts) for ts in zip(*(chunks[j] for j in members)))
            self.policies_by_name[actions[i].policy].observe(context, output)
            run.count_state(context.state, context.shared)

    def _keep(self, run: Run, site: Site, branch: str, action: Action, value: Value) -> None:
        """Store a computed value where later nodes read it: an online node's slots, else its own node."""
        if action.kind == ONLINE:
            run.shift(action.sources, value)
        else:
            run.put((run.step, site.name, branch), value)

    def _stored(self, run: Run, action: Action, kind: str, args: tuple, kwargs: dict) -> Value:
        """The value a reuse returns or a reconstruction builds from the stored sources."""
        if kind == REUSE:
            return run.store[action.sources[-1]]
        keys = action.sources
        if action.kind == ONLINE:  # the slots of its history filled so far; with one, a skip reuses it
            keys = tuple(key for key in keys if key in run.store)
            if len(keys) == 1 < len(action.sources):
                return run.store[keys[0]]
        kernel, params = run.kernels[action.kernel], dict(action.params)
        layouts = params.get("layout")  # a tuple: one layout per output tensor
        if "BLC" in (layouts if isinstance(layouts, tuple) else (layouts,)):  # tokens: the call's grid maps them to frames
            params["grid"] = self.adapter.frame_grid(args, kwargs)
        if getattr(kernel, "uses_steps", False):  # forecasts: the steps the sources were computed at
            params["steps"] = tuple(run.slot_steps.get(s, s[0]) for s in keys)
            params["at"] = run.step
        sources = [run.store[s] for s in keys]
        if isinstance(layouts, tuple):
            return tuple(kernel([src[k] for src in sources], **{**params, "layout": layouts[k]})
                         for k in range(len(sources[0])))
        return tuple(kernel([src[k] for src in sources], **params) for k in range(len(sources[0])))

    # -- one site call ----------------------------------------------------------------------------

    def _execute(self, run: Run, index: int, branches: tuple, actions: tuple, store: tuple,
                 forward: Callable, args: tuple, kwargs: dict) -> Any:
        site = self.sites[index]
        n = len(branches)
        kinds, contexts = self._decide(run, index, branches, actions, args, kwargs)
        computing = [i for i, k in enumerate(kinds) if k == COMPUTE]
        inputs = None
        if site.residual:  # the input each output is cached against: (name, tensor, per-branch chunks)
            names = site.residual if isinstance(site.residual, tuple) else None
            inputs = [(name, t, t.chunk(n) if isinstance(t, torch.Tensor) else None)
                      for name, t in residual_inputs(self.params[index], args, kwargs, names)]
        out = None
        computed: dict[int, Value] = {}
        if computing:
            call_args, call_kwargs = args, kwargs
            if index == 0:  # the branches the nested site calls carry
                run.present = tuple(branches[i] for i in computing)
            if len(computing) < n:
                call_args, call_kwargs = self.batch_inputs[index].select(args, kwargs, n, computing)
            out = forward(*call_args, **call_kwargs)
            tensors, run.templates[index] = unpack(out)
            if site.residual:
                _check_residual(site, tensors, inputs, computing, n)
            computed = dict(zip(computing, zip(*(t.chunk(len(computing)) for t in tensors))))
        parts: list[Value] = [()] * n
        stored_all = all(store)
        for i in computing:  # computed branches first: same-step consumers read them
            branch, action = branches[i], actions[i]
            parts[i] = computed[i]
            if store[i] or action.kind == ONLINE:
                if site.residual:
                    value = tuple(t - inputs[k][2][i] for k, t in enumerate(computed[i]))
                else:
                    value = computed[i] if stored_all or run.pool is not None else tuple(t.clone() for t in computed[i])
                self._keep(run, site, branch, action, value)
        self._observe(run, contexts, actions, index, computed)
        add_input = site.residual and computing  # with no branch computed, the input is added once
        for i, (branch, action, kind) in enumerate(zip(branches, actions, kinds)):
            if kind != COMPUTE:
                value = self._stored(run, action, kind, args, kwargs)
                if kind == REUSE and n == 1 and not site.residual and run.pool is not None:
                    run.pool.lend(value)  # returned as this call's output
                if kind == RECONSTRUCT and store[i]:
                    run.put((run.step, site.name, branch), value)
                parts[i] = tuple(t + inputs[k][2][i] for k, t in enumerate(value)) if add_input else value
            run.log.append((run.step, index, (branch,), kind))
        if len(computing) == n:
            return out
        joined = parts[0] if n == 1 else tuple(join(ts) for ts in zip(*parts))
        if site.residual and not computing:
            joined = tuple(t + inputs[k][1] for k, t in enumerate(joined))
        return run.templates[index](joined)

    # -- the block stack --------------------------------------------------------------------------

    def head_call(self, first: bool, last: bool, forward: Callable, args: tuple, kwargs: dict) -> Any:
        """A block run right before the stack: the first's inputs and the last's outputs give the
        residual online policies measure."""
        run = self.run
        if run is None or not run.present:
            return forward(*args, **kwargs)
        if first:
            run.head_inputs = tuple(t for _, t in residual_inputs(self.head_params, args, kwargs, self.stack_names))
        out = forward(*args, **kwargs)
        if last:
            run.head_outputs = unpack(out)[0]
        return out

    def stack_call(self, index: int, position: int, forward: Callable, args: tuple, kwargs: dict) -> Any:
        """A block of the stack's span (``position`` in it): the first decides, a skipped pass hands each
        block's input through, the last adds the stored residual back or stores the new one."""
        run = self.run
        if run is None or not run.present:
            return forward(*args, **kwargs)
        if position == 0:
            run.stack = self._stack_enter(run, index, args, kwargs)
        current, last = run.stack, position == len(self.sites[index].span) - 1
        if current is None:
            return forward(*args, **kwargs)
        matched = residual_inputs(self.stack_params[position], args, kwargs, self.stack_names)
        if current.residual is not None:  # skipped: the input passes through, the last block adds the residual
            template = run.templates[(index, position)]
            count = self.stack_outputs[position]
            if not last:
                return template(tuple(t for _, t in matched[:count]))
            run.stack = None
            out = template(tuple(t + r for (_, t), r in zip(matched, current.residual)))
            self._stack_done(run, current)
            return out
        out = forward(*args, **kwargs)
        tensors, run.templates[(index, position)] = unpack(out)
        self.stack_outputs[position] = len(tensors)
        if last:
            run.stack = None
            self._stack_exit(run, current, tensors)
        return out

    def _stack_enter(self, run: Run, index: int, args: tuple, kwargs: dict) -> "_StackPass | None":
        op = run.row[index]
        if not op.branches:
            return None
        some = _carried(op, run.present)
        if some:
            branches, actions, store, frees = (tuple(getattr(op, f)[i] for i in some)
                                               for f in ("branches", "actions", "store", "frees"))
        else:
            branches, actions, store, frees = op.branches, op.actions, op.store, op.frees
        if not any(store) and all(a.kind == COMPUTE and not a.observe for a in actions):
            for branch in branches:
                run.log.append((run.step, index, (branch,), COMPUTE))
            return None  # nothing to keep: the blocks run as they are
        kinds, contexts = self._decide(run, index, branches, actions, args, kwargs)
        if COMPUTE in kinds:  # the blocks run for every branch of the call or for none
            kinds = [COMPUTE] * len(kinds)
        entry = [t for _, t in residual_inputs(self.stack_params[0], args, kwargs, self.stack_names)]
        current = _StackPass(index, branches, actions, tuple(kinds), store, frees, contexts, entry)
        if COMPUTE not in kinds:
            values = [self._stored(run, a, k, args, kwargs) for a, k in zip(actions, kinds)]
            current.residual = values[0] if len(values) == 1 else tuple(join(ts) for ts in zip(*values))
        return current

    def _stack_exit(self, run: Run, current: "_StackPass", outputs: Value) -> None:
        """A computed pass: each branch's residual (last block's outputs minus the first block's inputs)."""
        site, n = self.sites[current.index], len(current.branches)
        for k, tensor in enumerate(outputs):
            if k >= len(current.entry) or not isinstance(current.entry[k], torch.Tensor) \
                    or current.entry[k].shape != tensor.shape:
                shape = tuple(current.entry[k].shape) if k < len(current.entry) and isinstance(current.entry[k], torch.Tensor) else None
                raise AdapterError(f"block stack '{site.name}': its last block's output {k} has shape {tuple(tensor.shape)} "
                                   f"but the first block's matching input has {shape}; keep more or fewer blocks computed "
                                   "at the stack's start (first_blocks) so that its first and last blocks see one "
                                   "shape, or override Adapter.stack_blocks")
        residuals = [tuple(t.chunk(n)[i] - e.chunk(n)[i] for t, e in zip(outputs, current.entry)) for i in range(n)]
        for i, (branch, action) in enumerate(zip(current.branches, current.actions)):
            if current.store[i] or action.kind == ONLINE:
                self._keep(run, site, branch, action, residuals[i])
        self._observe(run, current.contexts, current.actions, current.index,
                      {i: tuple(t.chunk(n)[i] for t in outputs) for i in range(n)})
        self._stack_done(run, current)

    def _stack_done(self, run: Run, current: "_StackPass") -> None:
        for branch, kind in zip(current.branches, current.kinds):
            run.log.append((run.step, current.index, (branch,), kind))
        for keys in current.frees:
            for key in keys:
                run.drop(key)
        run.note_peak()


def signal_reducer(model: torch.nn.Module) -> Callable[[Any, Any], float]:
    """How online signals become floats for ``model``: as they are, or, under diffusers' context
    parallelism (where each rank measures on its sequence shard), averaged over the parallel group,
    so that every rank takes the same decision and enters the same collectives."""
    config = getattr(getattr(model, "_parallel_config", None), "context_parallel_config", None)
    mesh = getattr(config, "_flattened_mesh", None)
    if mesh is None or mesh.size() == 1:
        return signal_value
    group, size = mesh.get_group(), mesh.size()
    device = mesh.device_type

    def reduce(value: Any, over: Any = None) -> float:
        parts = [torch.as_tensor(v).to(device, torch.float64).reshape(1) for v in (value, over) if v is not None]
        total = torch.cat(parts)
        torch.distributed.all_reduce(total, group=group)
        means = total.tolist()
        return means[0] / means[1] if over is not None else means[0] / size

    return reduce


def _timed_decide(run: Run, policy: Any, context: OnlineContext) -> bool:
    begin = time.perf_counter()
    reuse = bool(policy.decide(context))
    run.decide_seconds += time.perf_counter() - begin
    run.decisions += 1
    return reuse


class _StackPass:
    """The block stack's pass through one denoiser call: its decisions and, when skipped, the residual."""

    __slots__ = ("index", "branches", "actions", "kinds", "store", "frees", "contexts", "entry", "residual")

    def __init__(self, index: int, branches: tuple, actions: tuple, kinds: tuple, store: tuple, frees: tuple,
                 contexts: dict, entry: list) -> None:
        self.index, self.branches, self.actions, self.kinds = index, branches, actions, kinds
        self.store, self.frees, self.contexts, self.entry = store, frees, contexts, entry
        self.residual: Value | None = None


def _carried(op: Any, present: tuple[str, ...]) -> tuple[int, ...]:
    """The positions in ``op`` of the branches a call carries where it carries some of the step's
    branches only (split layouts: one, or a batched group of them); () where it carries them all."""
    if len(present) >= len(op.branches):
        return ()
    return tuple(i for i, branch in enumerate(op.branches) if branch in present)


def _check_residual(site: Site, outputs: Value, inputs: list, computing: list[int], n: int) -> None:
    """Each output tensor of a residual site must be shaped like its matching input tensor."""
    for k, tensor in enumerate(outputs):
        if k >= len(inputs):
            raise AdapterError(f"residual site '{site.name}': output {k} has no matching tensor input (the module "
                               f"takes {len(inputs)}); set residual=False or cache a module whose outputs match its inputs")
        name, _, chunks = inputs[k]
        if chunks is None:
            raise AdapterError(f"residual site '{site.name}': its input '{name}' is not a tensor in this call; "
                               "name tensor inputs in Site.residual")
        if tuple(tensor.shape) != (chunks[0].shape[0] * len(computing), *chunks[0].shape[1:]):
            cut = len(computing) < n  # then an input that carries the branches was most likely passed whole
            raise AdapterError(f"residual site '{site.name}': output {k} has shape {tuple(tensor.shape)} but its input "
                               f"'{name}' has shape {(chunks[0].shape[0] * len(computing), *chunks[0].shape[1:])}"
                               + (f" (cut to the {len(computing)} of its {n} CFG branches this call computes); another "
                                  "input that carries the branches may have been passed whole "
                                  "(cachekit.testing.check_adapter names it)" if cut else
                                  "; set residual=False or cache a module whose outputs match its inputs"))


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
