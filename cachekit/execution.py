"""Execution: what each hooked call of a run does, by the run's flat plan. The hot path is a list
look-up per call: nothing here touches networkx.

A site call is dispatched in named steps: decide its online nodes, compute the branches that
compute, keep what later nodes read, fill the others from the cache (a reuse, or a reconstruction
through ``reconstruct.rebuild``), and assemble the call's output. The block stack's blocks are
dispatched as one pass.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Sequence

import torch

from .adapter import forward_parameters
from .errors import AdapterError
from .policy import COMPUTE, ONLINE, RECONSTRUCT, REUSE, Action, OnlineContext, Policy
from .reconstruct import rebuild
from .run import Run
from .sites import STACK, Site
from .values import Value, first_tensor, join, residual_inputs, unpack

#: Permutations taking a video layout to (B, C, F, H, W).
_TO_BCFHW = {"BCFHW": (0, 1, 2, 3, 4), "BFCHW": (0, 2, 1, 3, 4), "BFHWC": (0, 4, 1, 2, 3)}


class Executor:
    """Executes the current run's plan at each hooked call (``run``: None between runs)."""

    def __init__(self, adapter: Any, policies: Sequence[Policy], sites: Sequence[Site]) -> None:
        self.adapter = adapter
        self.policies_by_name = {p.name: p for p in policies}
        self.sites = tuple(sites)
        self.run: Run | None = None
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

    # -- one site call ----------------------------------------------------------------------------

    def site_call(self, index: int, forward: Callable, args: tuple, kwargs: dict) -> Any:
        run = self.run
        if run is None or not run.present:  # outside a denoiser call of a caching run
            return forward(*args, **kwargs)
        op = run.row[index]
        if op.passthrough:
            if op.branches:  # () when planned skip: called only because an online parent computed
                run.record(index, run.present, COMPUTE)
            return forward(*args, **kwargs)
        return self.dispatch(run, index, op, forward, args, kwargs)

    def dispatch(self, run: Run, index: int, op: Any, forward: Callable, args: tuple, kwargs: dict) -> Any:
        some = _carried(op, run.present)  # split layout: this call carries some of the step's branches
        if index == 0:  # the denoiser call, for online decisions that read its inputs
            run.call = (args, kwargs, tuple(op.branches[i] for i in some) if some else op.branches)
        if op.passthrough:
            run.record(index, tuple(op.branches[i] for i in some) if some else op.branches, COMPUTE)
            return forward(*args, **kwargs)
        branches, actions, store, frees = _fields(op, some)
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
        hidden, layout = first_tensor(args, kwargs, self.adapter.latent_input), self.sites[0].layouts[0]
        if layout == "BLC":
            hidden = hidden.unflatten(1, self.adapter.frame_grid(args, kwargs)).permute(0, 4, 1, 2, 3)
        elif layout in _TO_BCFHW or (layout is None and hidden.ndim == 5):
            hidden = hidden.permute(_TO_BCFHW.get(layout, (0, 1, 2, 3, 4)))
        elif layout == "BCHW":
            hidden = hidden.unsqueeze(2)
        elif layout == "CFHW":
            hidden = hidden.unsqueeze(0)
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
        params = dict(action.params)
        kernel = run.kernels[action.kernel]
        if getattr(kernel, "uses_steps", False):  # forecasts: the steps the sources were computed at
            params["steps"] = tuple(run.slot_steps.get(s, s[0]) for s in keys)
            params["at"] = run.step
        def grid(tokens: torch.Tensor) -> tuple[int, int, int]:  # every token output lies on the call's grid
            return self.adapter.frame_grid(args, kwargs)

        return rebuild(kernel, [run.store[s] for s in keys], params, grid)

    def _execute(self, run: Run, index: int, branches: tuple, actions: tuple, store: tuple,
                 forward: Callable, args: tuple, kwargs: dict) -> Any:
        """One site call carrying ``branches``: decide, compute, keep, fill, assemble."""
        site, n = self.sites[index], len(branches)
        kinds, contexts = self._decide(run, index, branches, actions, args, kwargs)
        computing = [i for i, k in enumerate(kinds) if k == COMPUTE]
        inputs = self._residual_inputs(index, n, args, kwargs) if site.residual else None
        out, computed = None, {}
        if computing:
            out, computed = self._compute(run, index, branches, computing, inputs, forward, args, kwargs)
        self._keep_computed(run, site, branches, actions, store, computed, inputs)
        self._observe(run, contexts, actions, index, computed)
        parts = self._fill(run, index, branches, actions, kinds, store, computed, inputs, args, kwargs)
        if len(computing) == n:
            return out
        joined = parts[0] if n == 1 else tuple(join(ts) for ts in zip(*parts))
        if site.residual and not computing:  # with no branch computed, the input is added once
            joined = tuple(t + inputs[k][1] for k, t in enumerate(joined))
        return run.templates[index](joined)

    def _residual_inputs(self, index: int, n: int, args: tuple, kwargs: dict) -> list:
        """The input each output of a residual site is cached against: (name, tensor, per-branch chunks)."""
        site = self.sites[index]
        names = site.residual if isinstance(site.residual, tuple) else None
        return [(name, t, t.chunk(n) if isinstance(t, torch.Tensor) else None)
                for name, t in residual_inputs(self.params[index], args, kwargs, names)]

    def _compute(self, run: Run, index: int, branches: tuple, computing: list[int], inputs: list | None,
                 forward: Callable, args: tuple, kwargs: dict) -> tuple[Any, dict[int, Value]]:
        """Run the module for the branches ``computing`` (its inputs cut to them when not all
        compute); its output, and each computing branch's output tensors."""
        n = len(branches)
        if index == 0:  # the branches the nested site calls carry
            run.present = tuple(branches[i] for i in computing)
        if len(computing) < n:
            args, kwargs = self.batch_inputs[index].select(args, kwargs, n, computing)
        out = forward(*args, **kwargs)
        tensors, run.templates[index] = unpack(out)
        if inputs is not None:
            _check_residual(self.sites[index], tensors, inputs, computing, n)
        return out, dict(zip(computing, zip(*(t.chunk(len(computing)) for t in tensors))))

    def _keep_computed(self, run: Run, site: Site, branches: tuple, actions: tuple, store: tuple,
                       computed: dict[int, Value], inputs: list | None) -> None:
        """Store what later nodes read of the computed branches (before the others are filled:
        same-step consumers read them); a residual site stores output minus input."""
        stored_all = all(store)
        for i, value in computed.items():
            action = actions[i]
            if not (store[i] or action.kind == ONLINE):
                continue
            if inputs is not None:
                value = tuple(t - inputs[k][2][i] for k, t in enumerate(value))
            elif not stored_all and run.pool is None:  # the output is returned, and cut: keep a copy
                value = tuple(t.clone() for t in value)
            self._keep(run, site, branches[i], action, value)

    def _fill(self, run: Run, index: int, branches: tuple, actions: tuple, kinds: list[str], store: tuple,
              computed: dict[int, Value], inputs: list | None, args: tuple, kwargs: dict) -> list[Value]:
        """Each branch's output: computed, or reused or rebuilt from the cache (a residual site's
        plus its input, where some branch computed); every branch's op is logged."""
        site, n = self.sites[index], len(branches)
        add_input = inputs is not None and bool(computed)
        parts: list[Value] = [computed.get(i, ()) for i in range(n)]
        for i, (branch, action, kind) in enumerate(zip(branches, actions, kinds)):
            if kind != COMPUTE:
                value = self._stored(run, action, kind, args, kwargs)
                if kind == REUSE and n == 1 and inputs is None and run.pool is not None:
                    run.pool.lend(value)  # returned as this call's output
                if kind == RECONSTRUCT and store[i]:
                    run.put((run.step, site.name, branch), value)
                parts[i] = tuple(t + inputs[k][2][i] for k, t in enumerate(value)) if add_input else value
            run.record(index, (branch,), kind)
        return parts

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
        branches, actions, store, frees = _fields(op, some)
        if not any(store) and all(a.kind == COMPUTE and not a.observe for a in actions):
            for branch in branches:
                run.record(index, (branch,), COMPUTE)
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
            run.record(current.index, (branch,), kind)
        for keys in current.frees:
            for key in keys:
                run.drop(key)
        run.note_peak()



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


def _fields(op: Any, some: tuple[int, ...]) -> tuple[tuple, tuple, tuple, tuple]:
    """``op``'s branches, actions, stores and frees, of the positions ``some`` (all where empty)."""
    if not some:
        return op.branches, op.actions, op.store, op.frees
    return tuple(tuple(getattr(op, f)[i] for i in some) for f in ("branches", "actions", "store", "frees"))


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
