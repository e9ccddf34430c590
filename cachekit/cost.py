"""The cost model's measurements: per-site FLOPs (torch's FLOP counter), output bytes and wall time."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence, TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode

from .policy import RECONSTRUCT
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


def _around_sites(adapter: Any, sites: Sequence[Site], read: Callable[[], float],
                  call: Callable[[], T]) -> tuple[T, dict[str, float], dict[str, tuple]]:
    """Run ``call`` (one denoiser forward) with hooks that take ``read()`` before and after each
    site; return its result, each site's total difference ("denoiser": the whole call's) and each
    site's last output tensors."""
    from .runtime import unpack

    deltas: dict[str, float] = {}
    outputs: dict[str, tuple] = {}
    handles = []
    for site in sites:
        if site.kind == "denoiser":
            continue
        start: list[float] = []

        def before(module: Any, args: Any, start: list = start) -> None:
            start.append(read())

        def after(module: Any, args: Any, output: Any, name: str = site.name, start: list = start) -> None:
            deltas[name] = deltas.get(name, 0.0) + read() - start.pop()
            outputs[name] = unpack(output)[0]

        module = adapter.module(site)
        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        begin = read()
        result = call()
        deltas["denoiser"] = read() - begin
    finally:
        for handle in handles:
            handle.remove()
    outputs["denoiser"] = unpack(result)[0]
    return result, deltas, outputs


def measure_sites(adapter: Any, sites: Sequence[Site], call: Callable[[], T], per: int) -> tuple[T, dict[str, float], dict[str, int]]:
    """Run ``call`` (one denoiser forward carrying ``per`` CFG branches) and return its result, each
    site's inclusive FLOPs per branch, and each site's output bytes per branch."""
    from .runtime import nbytes

    with flop_counter() as counter:
        result, flops, outputs = _around_sites(adapter, sites, counter.get_total_flops, call)
    return result, {k: v / per for k, v in flops.items()}, {k: nbytes(v) // per for k, v in outputs.items()}


def _synchronizer(model: torch.nn.Module) -> Callable[[], None]:
    device = next(model.parameters()).device
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def time_sites(adapter: Any, sites: Sequence[Site], call: Callable[[], object],
               outputs: dict[str, tuple] | None = None) -> dict[str, float]:
    """Run ``call`` (one denoiser forward) and return each site's inclusive wall time in seconds
    (synchronising the accelerator around each site when the model lives on one); each site's
    output tensors go to ``outputs`` if given."""
    sync = _synchronizer(adapter.model)

    def clock() -> float:
        sync()
        return time.perf_counter()

    _, seconds, produced = _around_sites(adapter, sites, clock, call)
    if outputs is not None:
        outputs.update(produced)
    return seconds


def time_kernels(plan: Any, outputs: dict[str, tuple], kernels: dict[str, Callable], model: torch.nn.Module) -> dict[tuple[str, str], float]:
    """Seconds of one call of each reconstruction kernel the plan uses at each site, run on that
    site's outputs of one branch (after one untimed call)."""
    sync = _synchronizer(model)
    seconds: dict[tuple[str, str], float] = {}
    for (step, site, branch), action in plan.nodes():
        key = (site, action.kernel)
        if action.kind != RECONSTRUCT or key in seconds or site not in outputs:
            continue
        value, kernel, params = outputs[site], kernels[action.kernel], dict(action.params)
        if params.get("layout") == "BLC":  # tokens timed as one frame of L tokens: the same FFT work
            params["grid"] = (1, 1, value[0].shape[1])

        def rebuild() -> tuple:
            return tuple(kernel([element] * len(action.sources), **params) for element in value)

        rebuild()
        sync()
        begin = time.perf_counter()
        rebuild()
        sync()
        seconds[key] = time.perf_counter() - begin
    return seconds
