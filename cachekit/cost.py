"""The cost model's measurements: per-site FLOPs (torch's FLOP counter), output bytes and wall time."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence, TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode

from .sites import Site

T = TypeVar("T")


def _sdpa_flops(query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int], *args: object,
                out_shape: object = None, **kwargs: object) -> int:
    """Two batched matmuls: Q K^T and (softmax) V."""
    *batch, length, dim = query_shape
    heads = 1
    for size in batch:
        heads *= size
    return 2 * heads * length * key_shape[-2] * (dim + value_shape[-1])


# torch counts SDPA on its CUDA kernels; the CPU flash kernel needs the formula too.
_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def flop_counter() -> FlopCounterMode:
    """A FLOP counter whose ``get_total_flops()`` the runtime reads around each site's call."""
    return FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)


def measure_sites(adapter: Any, sites: Sequence[Site], call: Callable[[], T], per: int) -> tuple[T, dict[str, float], dict[str, int]]:
    """Run ``call`` (one denoiser forward carrying ``per`` CFG branches) and return its result, each
    site's inclusive FLOPs per branch, and each site's output bytes per branch."""
    from .runtime import nbytes, unpack

    costs: dict[str, float] = {}
    sizes: dict[str, int] = {}
    handles = []
    with flop_counter() as counter:
        for site in sites:
            if site.kind == "denoiser":
                continue
            start: list[float] = []

            def before(module: Any, args: Any, start: list = start) -> None:
                start.append(counter.get_total_flops())

            def after(module: Any, args: Any, output: Any, name: str = site.name, start: list = start) -> None:
                costs[name] = costs.get(name, 0) + (counter.get_total_flops() - start.pop()) / per
                sizes[name] = nbytes(unpack(output)[0]) // per

            module = adapter.module(site)
            handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
        try:
            result = call()
        finally:
            for handle in handles:
                handle.remove()
        costs["denoiser"] = counter.get_total_flops() / per
    sizes["denoiser"] = nbytes(unpack(result)[0]) // per
    return result, costs, sizes


def _synchronizer(model: torch.nn.Module) -> Callable[[], None]:
    device = next(model.parameters()).device
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def time_sites(adapter: Any, sites: Sequence[Site], call: Callable[[], object],
               outputs: dict[str, tuple] | None = None) -> dict[str, float]:
    """Run ``call`` (one denoiser forward) and return each site's inclusive wall time in seconds
    (synchronising the accelerator around each site when the model lives on one); each site's
    output tensors go to ``outputs`` if given."""
    from .runtime import unpack

    sync = _synchronizer(adapter.model)
    seconds: dict[str, float] = {}
    handles = []
    for site in sites:
        if site.kind == "denoiser":
            continue
        start: list[float] = []

        def before(module: Any, args: Any, start: list = start) -> None:
            sync()
            start.append(time.perf_counter())

        def after(module: Any, args: Any, output: Any, name: str = site.name, start: list = start) -> None:
            sync()
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start.pop()
            if outputs is not None:
                outputs[name] = unpack(output)[0]

        module = adapter.module(site)
        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        sync()
        begin = time.perf_counter()
        result = call()
        sync()
        seconds["denoiser"] = time.perf_counter() - begin
        if outputs is not None:
            outputs["denoiser"] = unpack(result)[0]
    finally:
        for handle in handles:
            handle.remove()
    return seconds


def time_kernels(plan: Any, outputs: dict[str, tuple], kernels: dict[str, Callable], model: torch.nn.Module) -> dict[tuple[str, str], float]:
    """Seconds of one call of each reconstruction kernel the plan uses at each site, run on that
    site's outputs of one branch (after one untimed call)."""
    sync = _synchronizer(model)
    seconds: dict[tuple[str, str], float] = {}
    for (step, site, branch), action in plan.nodes():
        key = (site, action.kernel)
        if action.kind != "reconstruct" or key in seconds or site not in outputs:
            continue
        value, kernel, params = outputs[site], kernels[action.kernel], dict(action.params)

        def rebuild() -> tuple:
            return tuple(kernel([element] * len(action.sources), **params) for element in value)

        rebuild()
        sync()
        begin = time.perf_counter()
        rebuild()
        sync()
        seconds[key] = time.perf_counter() - begin
    return seconds
