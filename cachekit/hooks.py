"""Where cachekit meets diffusers' hooks: the hooks it registers on a model's modules, their place
beside diffusers' context-parallel hooks, and their behaviour inside ``torch.compile``.

This is the only module that touches diffusers' hook internals (``HookRegistry``, ``ModelHook``,
``StateManager``) and its context-parallel configuration.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Protocol

import attrs
import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import StateManager
from torch._C._dynamo.eval_frame import get_eval_frame_callback, set_eval_frame
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .copies import plain_state
from .policy import signal_value
from .sites import STACK, Site

HOOK_NAME = "cachekit"
#: The block stack's hooks on its blocks, and on the first block when it is kept before the stack.
STACK_HOOK, HEAD_HOOK = "cachekit.stack", "cachekit.head"
HOOK_NAMES = (HOOK_NAME, STACK_HOOK, HEAD_HOOK)

#: The name prefixes of diffusers' context-parallel hooks (they split a module's inputs along the
#: sequence and gather its outputs).
PARALLEL_HOOKS = ("cp_input---", "cp_output---")

#: What torch.compile(fullgraph=True) says when it meets a hooked module.
FULLGRAPH = ("cachekit's hooks run the run's bookkeeping outside the graph, so a module cachekit hooks cannot be "
             "compiled with fullgraph=True: compile it with fullgraph=False, or compile with fullgraph=True the "
             "modules below cachekit's hooks (session.hooked_modules() lists the hooked ones)")


class Lifecycle(Protocol):
    """What the denoiser's hook calls: the denoiser call, the pipeline's cache context, the call's end."""

    def denoiser_call(self, forward: Callable, args: tuple, kwargs: dict) -> Any: ...
    def set_context(self, context: Any) -> None: ...
    def pipeline_ended(self) -> None: ...


class Execution(Protocol):
    """What the other hooks call: a site's call, a stack block's call, the stack head's call."""

    def site_call(self, index: int, forward: Callable, args: tuple, kwargs: dict) -> Any: ...
    def stack_call(self, index: int, position: int, forward: Callable, args: tuple, kwargs: dict) -> Any: ...
    def head_call(self, first: bool, last: bool, forward: Callable, args: tuple, kwargs: dict) -> Any: ...


class _Hook(ModelHook):
    """A cachekit hook. It is registered in the module's diffusers ``HookRegistry``, which composes it
    with other hooks and removes it; ``Installation.register`` then sets the module's forward to
    ``direct`` while it is the outermost hook, since the registry's wrapper would only pass values through."""

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

    return torch.compiler.disable(call)(compiled_forward, args, kwargs)


_compiled_site = torch.compiler.disable(_enter_compiled_site, recursive=False, reason=FULLGRAPH)


class _ContextTap(StateManager):
    """Receives the ``CacheContext`` that ``transformer.cache_context(...)`` sets on stateful hooks."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    def set_context(self, context: Any) -> None:
        self.lifecycle.set_context(context)


class _DenoiserHook(_Hook):
    _is_stateful = True  # so that diffusers hands it the pipeline's cache_context

    def __init__(self, lifecycle: Lifecycle) -> None:
        super().__init__(lifecycle.denoiser_call)
        self.lifecycle = lifecycle
        self.tap = _ContextTap(lifecycle)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        """diffusers calls this when a pipeline call ends: a run still active ends here."""
        self.lifecycle.pipeline_ended()
        return module


class Installation:
    """The hooks of one session on its adapter's modules: registered by ``install``, removed by ``remove``."""

    def __init__(self) -> None:
        self._installed: list[tuple[torch.nn.Module, bool, str]] = []

    def install(self, adapter: Any, sites: tuple[Site, ...], lifecycle: Lifecycle, execution: Execution) -> None:
        """Hook every planned site's modules (the denoiser at index 0), and the block stack's blocks."""
        for index, site in enumerate(sites):
            if site.kind == STACK:
                continue
            for module in adapter.modules(site):
                hook = _DenoiserHook(lifecycle) if index == 0 else _Hook(functools.partial(execution.site_call, index))
                self.register(module, hook, HOOK_NAME)
        stack_index = next((i for i, s in enumerate(sites) if s.kind == STACK), None)
        if stack_index is None:
            return
        stack = sites[stack_index]  # outermost on its blocks: a skipped pass never reaches their sites
        for position, path in enumerate(stack.span):
            for module in adapter.modules(attrs.evolve(stack, module_path=path)):
                self.register(module, _Hook(functools.partial(execution.stack_call, stack_index, position)), STACK_HOOK)
        for position, path in enumerate(stack.head):  # the first records its inputs, the last its outputs
            first, last = position == 0, position == len(stack.head) - 1
            if first or last:
                for module in adapter.modules(attrs.evolve(stack, module_path=path)):
                    self.register(module, _Hook(functools.partial(execution.head_call, first, last)), HEAD_HOOK)

    def register(self, module: torch.nn.Module, hook: _Hook, name: str) -> None:
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

    def modules(self) -> list[torch.nn.Module]:
        """The hooked modules, in the order they were hooked (a module once per hook)."""
        return [module for module, _, _ in self._installed]

    def remove(self) -> None:
        """Remove every hook, latest first; a module nothing else wraps gets its class's forward back."""
        for module, created, name in reversed(self._installed):
            hooks = module._diffusers_hook
            hooks.remove_hook(name, recurse=False)
            module.__dict__.pop("__getstate__", None)
            if not hooks.hooks:  # nothing else wraps it: back to the class's own forward
                module.__dict__.pop("forward", None)
                if created:  # registrations on one module are undone latest first: this was its first
                    del module._diffusers_hook
            self._installed.pop()


def is_hooked(module: torch.nn.Module) -> bool:
    """Whether ``module`` carries a cachekit hook (a session is enabled on it)."""
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and registry.get_hook(HOOK_NAME) is not None


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
