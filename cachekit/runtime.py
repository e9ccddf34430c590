"""The runtime: instance-level hooks on the planned sites, and the per-run state that executes a plan.

The hot path is a list look-up per hooked call: nothing here touches networkx.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.utils import BaseOutput

from .adapter import forward_parameters
from .cost import measure_sites, time_kernels, time_sites
from .errors import AdapterError
from .registry import registry
from .plan import CompiledPlan, Prediction, StepPlan
from .policy import COMPUTE, ONLINE, REUSE, NodeKey
from .sites import Site

if TYPE_CHECKING:
    from .api import Session

HOOK_NAME = "cachekit"


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
    return sum(t.nbytes for t in value)


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
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
    batch = _first_tensor(args, kwargs).shape[0]

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
        chunks = value.chunk(parts)
        return chunks[keep[0]] if len(keep) == 1 else torch.cat([chunks[i] for i in keep])

    return (tuple(pick(f"argument {i}", a, True) for i, a in enumerate(args)),
            {k: pick(k, v) for k, v in kwargs.items()})


def residual_inputs(params: Sequence[str], args: tuple, kwargs: dict) -> list[tuple[str, torch.Tensor]]:
    """The tensor arguments of a call in the module's parameter order (then any further keywords):
    a residual site's output ``k`` is cached against the ``k``-th of them."""
    found = [(name, args[i] if i < len(args) else kwargs.get(name)) for i, name in enumerate(params)]
    found += [(name, value) for name, value in kwargs.items() if name not in params]
    found += [(f"argument {i}", value) for i, value in enumerate(args[len(params):], len(params))]
    return [(name, value) for name, value in found if isinstance(value, torch.Tensor)]


class Run:
    """State of one denoising run: position, stored tensors, decision log. Dropped when the run ends."""

    def __init__(self, plan: StepPlan, compiled: CompiledPlan, call_order: tuple[str, ...], kernels: dict[str, Callable]) -> None:
        self.plan = plan
        self.compiled = compiled
        self.ops = compiled.ops
        self.call_order = call_order
        self.kernels = kernels
        self.step = 0
        self.calls = 0
        self.row = self.ops[0]
        #: Inside a denoiser call: the CFG branches its nested site calls carry; () outside.
        self.present: tuple[str, ...] = ()
        self.store: dict[NodeKey, Value] = {}
        self.bytes = 0
        self.peak_bytes = 0
        #: (step, site index, branches, action kind) of every executed op.
        self.log: list[tuple[int, int, tuple[str, ...], str]] = []
        self.templates: dict[int, Callable[[Value], Any]] = {}
        self.online_state: dict[tuple[int, str], dict] = {}
        self.shape: tuple | None = None
        self.caching = True
        self.profiling = False
        self.prediction: Prediction | None = None
        self.started = time.perf_counter()
        self.step_ends: list[float] = []

    def put(self, key: NodeKey, value: Value) -> None:
        old = self.store.get(key)
        if old is not None:
            self.bytes -= nbytes(old)
        self.store[key] = value
        self.bytes += nbytes(value)

    def drop(self, key: NodeKey) -> None:
        value = self.store.pop(key, None)
        if value is not None:
            self.bytes -= nbytes(value)

    def clear(self) -> None:
        self.store.clear()
        self.bytes = 0


class _SiteHook(ModelHook):
    def __init__(self, runtime: "Runtime", index: int) -> None:
        super().__init__()
        self.runtime, self.index = runtime, index

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.runtime.site_call(self.index, self.fn_ref.original_forward, args, kwargs)


class _DenoiserHook(ModelHook):
    def __init__(self, runtime: "Runtime") -> None:
        super().__init__()
        self.runtime = runtime

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.runtime.denoiser_call(self.fn_ref.original_forward, args, kwargs)


class Runtime:
    """Installs the hooks of one session and executes its current run."""

    def __init__(self, session: "Session", sites: Sequence[Site]) -> None:
        self.session = session
        self.sites = tuple(sites)
        self.run: Run | None = None
        self._suspended = False
        self._installed: list[tuple[torch.nn.Module, bool]] = []
        adapter = session.adapter
        #: Per site: the keyword inputs that carry the CFG branches (None: detected from dim 0).
        self.batch_names = [s.batch_inputs if s.batch_inputs is not None else adapter.batch_kwargs for s in self.sites]
        #: Per residual site: its module's forward parameters, to match outputs with inputs.
        self.params = {i: forward_parameters(adapter.module(s))[0] for i, s in enumerate(self.sites) if s.residual}

    # -- hooks ----------------------------------------------------------------------------------

    def install(self) -> None:
        adapter = self.session.adapter
        for index, site in enumerate(self.sites):
            for module in adapter.modules(site):
                created = not hasattr(module, "_diffusers_hook")
                hook = _DenoiserHook(self) if index == 0 else _SiteHook(self, index)
                HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, HOOK_NAME)
                self._installed.append((module, created))

    def uninstall(self) -> None:
        for module, created in reversed(self._installed):
            registry = module._diffusers_hook
            registry.remove_hook(HOOK_NAME, recurse=False)
            if not registry.hooks:  # nothing else wraps it: back to the class's own forward
                module.__dict__.pop("forward", None)
                if created:
                    del module._diffusers_hook
        self._installed.clear()
        self.run = None

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Calls made inside pass straight through, outside any run."""
        self._suspended, run, self.run = True, self.run, None
        try:
            yield
        finally:
            self._suspended, self.run = False, run

    # -- calls ----------------------------------------------------------------------------------

    def denoiser_call(self, forward: Callable, args: tuple, kwargs: dict) -> Any:
        session = self.session
        if self._suspended:
            return forward(*args, **kwargs)
        run = self.run or session._start_bare_run()
        if run is None or run.present:  # outside a run, or a nested call
            return forward(*args, **kwargs)
        try:
            out = self._denoise(run, forward, args, kwargs)
        except BaseException:
            session._abort_run()
            raise
        run.calls += 1
        if session.bare_steps is not None and run.calls == session.calls_per_step(run):
            session._end_step()
        return out

    def _denoise(self, run: Run, forward: Callable, args: tuple, kwargs: dict) -> Any:
        session = self.session
        hidden = _first_tensor(args, kwargs)
        signature = (tuple(hidden.shape), hidden.dtype, hidden.device)
        if run.shape is None:
            run.shape = signature
            run.profiling = session._needs_profile(run, signature)
        elif run.shape != signature and run.caching:
            warnings.warn(
                f"cachekit: input shape changed mid-run from {run.shape[0]} to {signature[0]}; caching is off "
                "for the rest of this run (the next run plans afresh)", stacklevel=4)
            run.caching = False
            run.clear()
        if not run.caching:
            return forward(*args, **kwargs)
        op = run.row[0]
        if session.adapter.cfg_layout == "split":
            run.present = (run.call_order[run.calls % len(run.call_order)],)
        else:
            run.present = op.branches
        try:
            if not run.profiling:
                return self._dispatch(run, 0, op, forward, args, kwargs)
            branches = len(run.present)
            out, flops, sizes = measure_sites(session.adapter, run.plan.sites,
                                              lambda: self._dispatch(run, 0, op, forward, args, kwargs), branches)
            run.profiling = False
            try:
                seconds, kernels = self._time_calls(run.plan, forward, args, kwargs, branches)
            except Exception as err:  # the measurement is optional: predict from FLOPs instead
                warnings.warn(f"cachekit: could not time the model ({type(err).__name__}: {err}); "
                              "predicting from FLOP counts", stacklevel=4)
                seconds, kernels = {}, {}
            session._record_profile(run, signature, flops, sizes, seconds, kernels)
            return out
        finally:
            run.present = ()

    def _time_calls(self, plan: StepPlan, forward: Callable, args: tuple, kwargs: dict,
                    branches: int) -> tuple[dict[int, dict[str, float]], dict[tuple[str, str], float]]:
        """Time each site in one uncached call with every branch of this call and, when it carries
        several, in one with the last (cond) branch alone, as CFG-skipping steps run it; then time
        the plan's reconstruction kernels on that call's one-branch outputs."""
        adapter = self.session.adapter
        outputs: dict[str, tuple] = {}
        with self.suspended(), torch.no_grad():
            seconds = {branches: time_sites(adapter, plan.sites, lambda: forward(*args, **kwargs))}
            one_args, one_kwargs = args, kwargs
            if branches > 1:
                cond = [b for b in adapter.call_order if b in plan.branches].index("cond")
                one_args, one_kwargs = select_batch(args, kwargs, self.batch_names[0], branches, [cond], "site 'denoiser'")
                forward(*one_args, **one_kwargs)  # warm up the new shape
                seconds[1] = time_sites(adapter, plan.sites, lambda: forward(*one_args, **one_kwargs), outputs)
            else:
                time_sites(adapter, plan.sites, lambda: forward(*one_args, **one_kwargs), outputs)
            kernels = time_kernels(plan, outputs, {name: registry().get("kernel", name) for name in plan.kernels},
                                   adapter.model)
        return seconds, kernels

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
        if len(run.present) == 1 and len(op.branches) > 1:  # split layout: this call is one branch
            i = op.branches.index(run.present[0])
            branches, actions, store, frees = (op.branches[i],), (op.actions[i],), (op.store[i],), (op.frees[i],)
        else:
            branches, actions, store, frees = op.branches, op.actions, op.store, op.frees
        if op.passthrough:
            run.log.append((run.step, index, branches, COMPUTE))
            return forward(*args, **kwargs)
        out = self._execute(run, index, branches, actions, store, forward, args, kwargs)
        for keys in frees:
            for key in keys:
                run.drop(key)
        run.peak_bytes = max(run.peak_bytes, run.bytes)  # cache bytes held between ops
        return out

    def _execute(self, run: Run, index: int, branches: tuple, actions: tuple, store: tuple,
                 forward: Callable, args: tuple, kwargs: dict) -> Any:
        site = self.sites[index]
        policies = self.session.policies_by_name
        kinds = []
        for branch, action in zip(branches, actions):
            kind = action.kind
            if kind == ONLINE:
                state = run.online_state.setdefault((index, branch), {})
                kind = REUSE if policies[action.policy].decide(state, args, kwargs) else COMPUTE
            kinds.append(kind)
        n = len(branches)
        computing = [i for i, k in enumerate(kinds) if k == COMPUTE]
        inputs = None
        if site.residual:  # per input tensor, its per-branch chunks
            inputs = [(name, t.chunk(n)) for name, t in residual_inputs(self.params[index], args, kwargs)]
        out = chunks = None
        if computing:
            call_args, call_kwargs = args, kwargs
            if index == 0:  # the branches the nested site calls carry
                run.present = tuple(branches[i] for i in computing)
            if len(computing) < n:
                call_args, call_kwargs = select_batch(args, kwargs, self.batch_names[index], n, computing,
                                                      f"site '{site.name}'")
            out = forward(*call_args, **call_kwargs)
            tensors, run.templates[index] = unpack(out)
            if site.residual:
                _check_residual(site, tensors, inputs, computing, n)
            chunks = list(zip(*(t.chunk(len(computing)) for t in tensors)))
        parts: list[Value] = [()] * n
        stored_all = all(store)
        for j, i in enumerate(computing):  # computed branches first: same-step consumers read them
            branch, action = branches[i], actions[i]
            parts[i] = chunks[j]
            if store[i] or action.kind == ONLINE:
                if site.residual:
                    value = tuple(t - inputs[k][1][i] for k, t in enumerate(chunks[j]))
                else:
                    value = chunks[j] if stored_all else tuple(t.clone() for t in chunks[j])
                run.put(action.sources[0] if action.kind == ONLINE else (run.step, site.name, branch), value)
            if action.kind == ONLINE:
                policies[action.policy].observe(run.online_state[(index, branch)], args, kwargs, chunks[j])
        for i, (branch, action, kind) in enumerate(zip(branches, actions, kinds)):
            if kind != COMPUTE:
                if kind == REUSE:
                    value = run.store[action.sources[0]]
                else:
                    kernel, params = run.kernels[action.kernel], dict(action.params)
                    if params.get("layout") == "BLC":  # a token sequence: the call's grid maps it to frames
                        params["grid"] = self.session.adapter.frame_grid(args, kwargs)
                    sources = [run.store[s] for s in action.sources]
                    value = tuple(kernel([src[k] for src in sources], **params) for k in range(len(sources[0])))
                    if store[i]:
                        run.put((run.step, site.name, branch), value)
                parts[i] = tuple(t + inputs[k][1][i] for k, t in enumerate(value)) if site.residual else value
            run.log.append((run.step, index, (branch,), kind))
        if len(computing) == n:
            return out
        joined = parts[0] if n == 1 else tuple(torch.cat(ts) for ts in zip(*parts))
        return run.templates[index](joined)


def _check_residual(site: Site, outputs: Value, inputs: list, computing: list[int], n: int) -> None:
    """Each output tensor of a residual site must be shaped like its matching input tensor."""
    for k, tensor in enumerate(outputs):
        shape = tuple(tensor.shape)
        if k >= len(inputs):
            raise AdapterError(f"residual site '{site.name}': output {k} has no matching tensor input (the module "
                               f"takes {len(inputs)}); set residual=False or cache a module whose outputs match its inputs")
        name, chunks = inputs[k]
        expected = (chunks[0].shape[0] * len(computing), *chunks[0].shape[1:])
        if shape != expected:
            full = (chunks[0].shape[0] * n, *chunks[0].shape[1:])
            raise AdapterError(f"residual site '{site.name}': output {k} has shape {shape} but its input '{name}' has "
                               f"shape {full}; set residual=False or cache a module whose outputs match its inputs")
