"""The cost model: profiling (per-site FLOPs, output bytes and wall time), and the prediction of a
plan's speedup and cache bytes from them. One implementation, used by a run's first call and by a
dry run alike."""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any, Callable, ContextManager, Mapping, Sequence, TypeVar

import torch
from torch._C._dynamo.eval_frame import get_eval_frame_callback

from . import reconstruct
from .flops import FlopCounter
from .plan import Prediction, StepPlan
from .policy import RECONSTRUCT, NodeKey
from .sites import Site
from .values import nbytes, unpack

T = TypeVar("T")


def flop_counter() -> FlopCounter:
    """A FLOP counter whose ``get_total_flops()`` the runtime reads around each site's call."""
    return FlopCounter()


def _around_sites(adapter: Any, sites: Sequence[Site], read: Callable[[], float],
                  call: Callable[[], T]) -> tuple[T, dict[str, float], dict[str, tuple]]:
    """Run ``call`` (one denoiser forward) with hooks that take ``read()`` before and after each
    site; return its result, each site's total difference ("denoiser": the whole call's) and each
    site's last output tensors."""
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

        # the block stack runs from its first block's call to its last's end
        first, last = ((adapter.model.get_submodule(site.span[0]), adapter.model.get_submodule(site.span[-1]))
                       if site.span else (adapter.module(site),) * 2)
        handles += [first.register_forward_pre_hook(before), last.register_forward_hook(after)]
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
    with _eager(), flop_counter() as counter:
        result, flops, outputs = _around_sites(adapter, sites, counter.get_total_flops, call)
    return result, {k: v / per for k, v in flops.items()}, {k: nbytes(v) // per for k, v in outputs.items()}


def _eager() -> ContextManager[None]:
    """Compiled code runs eager inside: dynamo would skip for good any code it meets under the FLOP
    counter's dispatch mode (a compiled model's first call would then keep it eager)."""
    if get_eval_frame_callback() not in (None, False):  # inside a compiled region: the stance is fixed
        return contextlib.nullcontext()
    return torch.compiler.set_stance("force_eager")


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
    site's outputs of one branch (the fastest of three, after one untimed call)."""
    sync = _synchronizer(model)
    seconds: dict[tuple[str, str], float] = {}
    for (step, site, branch), action in plan.nodes():
        key = (site, action.kernel)
        if action.kind != RECONSTRUCT or key in seconds or site not in outputs:
            continue
        value, kernel, params = outputs[site], kernels[action.kernel], dict(action.params)
        if getattr(kernel, "uses_steps", False):  # forecasts: sources one step apart, the next step
            params["steps"], params["at"] = tuple(range(len(action.sources))), len(action.sources)
        sources = [value] * len(action.sources)

        def rebuild() -> tuple:  # tokens timed as one frame of L tokens: the same FFT work
            return reconstruct.rebuild(kernel, sources, params, lambda tokens: (1, 1, tokens.shape[1]))

        rebuild()
        times = []
        for _ in range(3):  # the fastest of three: a kernel is short, one pause would dominate it
            sync()
            begin = time.perf_counter()
            rebuild()
            sync()
            times.append(time.perf_counter() - begin)
        seconds[key] = min(times)
    return seconds


#: Timed uncached calls per branch count when profiling (interleaved); each site's fastest counts.
TIMED_CALLS = 2

#: What one profile holds: per-site FLOPs and bytes per branch, seconds by branch count, kernel seconds.
Profile = tuple[dict[str, float], dict[str, int], dict[int, dict[str, float]], dict[tuple[str, str], float]]


class CostModel:
    """Profiles a model once per input signature and branch count, and predicts every plan from that.

    ``quiet`` returns a context inside which the cache hooks pass calls straight through.
    """

    def __init__(self, adapter: Any, quiet: Callable[[], ContextManager[None]] = contextlib.nullcontext,
                 timed: bool = False) -> None:
        self.adapter = adapter
        self.quiet = quiet
        #: Whether a run's first call is followed by timed uncached calls (``enable(..., profile=True)``).
        self.timed = timed
        self._profiles: dict[tuple, Profile] = {}
        self._predictions: dict[tuple, Prediction | None] = {}
        self._fractions: dict[tuple, float | None] = {}

    def profiled(self, signature: tuple, branches: tuple[str, ...]) -> bool:
        return (signature, branches) in self._profiles

    def profile(self, signature: tuple, plan: StepPlan, kernels: dict[str, Callable], call: Callable[[], T],
                forward: Callable, args: tuple, kwargs: dict, per: int, timed: bool | None = None) -> T:
        """Run ``call`` (one denoiser call carrying ``per`` branches) counting each site's FLOPs and
        bytes; return the call's result. ``timed`` (default: the model's setting): then also time
        ``forward(*args, **kwargs)`` and the plan's kernels in uncached calls of their own, for a
        prediction in seconds; a model that cannot be timed is predicted from its FLOPs, with a warning."""
        result, flops, sizes = measure_sites(self.adapter, plan.sites, call, per)
        seconds, kernel_seconds = {}, {}
        if self.timed if timed is None else timed:
            try:
                seconds, kernel_seconds = self._time(plan, kernels, forward, args, kwargs, per)
            except Exception as err:  # the timing is optional: predict from FLOPs instead
                warnings.warn(f"cachekit: could not time the model ({type(err).__name__}: {err}); "
                              "predicting from FLOP counts", stacklevel=2)
        self._profiles[(signature, plan.branches)] = (flops, sizes, seconds, kernel_seconds)
        return result

    def predict(self, plan: StepPlan, signature: tuple, decided: Mapping[NodeKey, str] | None = None) -> Prediction | None:
        """The plan's prediction from the profile of ``signature``: from timed calls where they measured
        something, else from FLOPs (linear in the branches); None for a model whose work neither sees.
        ``decided``: the kinds a run's online nodes took (that prediction is not kept)."""
        key = (plan, signature)
        if decided is not None:
            return self._predict(plan, signature, decided)
        if key not in self._predictions:
            self._predictions[key] = self._predict(plan, signature, None)
        return self._predictions[key]

    def _predict(self, plan: StepPlan, signature: tuple, decided: Mapping[NodeKey, str] | None) -> Prediction | None:
        flops, sizes, seconds, kernel_seconds = self._profiles[(signature, plan.branches)]
        split = self.adapter.cfg_layout == "split"
        if seconds and all(times.get("denoiser", 0) > 0 for times in seconds.values()):
            return plan.predict(seconds, sizes, split, basis="seconds", kernel_cost=kernel_seconds, decided=decided)
        return self._by_flops(plan, flops, sizes, decided)

    def _by_flops(self, plan: StepPlan, flops: dict, sizes: dict, decided: Mapping[NodeKey, str] | None) -> Prediction | None:
        if flops.get("denoiser", 0) <= 0:
            return None
        split = self.adapter.cfg_layout == "split"
        per = 1 if split else len(plan.branches)
        return plan.predict({per: {k: v * per for k, v in flops.items()}}, sizes, split, basis="flops", decided=decided)

    def compute_fraction(self, plan: StepPlan, signature: tuple, decided: Mapping[NodeKey, str] | None = None) -> float | None:
        """The FLOPs a run of ``plan`` executes (with the decisions an online run took) over the uncached
        run's, from the counted FLOPs of each site; None for a model whose FLOPs were not seen. Without
        ``decided`` (a static plan: every run executes the same), it is kept with the plan."""
        key = (plan, signature)
        if decided is None and key in self._fractions:
            return self._fractions[key]
        flops, sizes, _, _ = self._profiles[(signature, plan.branches)]
        prediction = self._by_flops(plan, flops, sizes, decided)
        fraction = 1 / prediction.speedup if prediction is not None else None
        if decided is None:
            self._fractions[key] = fraction
        return fraction

    def forget(self, plan: StepPlan) -> None:
        """Drop the predictions of ``plan`` (the session no longer keeps it)."""
        for kept in (self._predictions, self._fractions):
            for key in [key for key in kept if key[0] is plan]:
                del kept[key]

    def dry_run(self, plan: StepPlan, kernels: dict[str, Callable]) -> Prediction | None:
        """Predict ``plan`` from the adapter's example inputs, profiling them first if needed."""
        per = len(plan.branches) if self.adapter.cfg_layout == "batched" else 1
        args, kwargs = self.adapter.example_call(per)
        hidden = next(v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor))
        signature = (tuple(hidden.shape), hidden.dtype, hidden.device)
        if not self.profiled(signature, plan.branches):
            model = self.adapter.model
            with torch.no_grad(), self.quiet():
                self.profile(signature, plan, kernels, lambda: model(*args, **kwargs), model, args, kwargs, per, timed=True)
        return self.predict(plan, signature)

    def _time(self, plan: StepPlan, kernels: dict[str, Callable], forward: Callable, args: tuple, kwargs: dict,
              per: int) -> tuple[dict[int, dict[str, float]], dict[tuple[str, str], float]]:
        """Time each site in uncached calls with every branch of this call and, when it carries
        several, with the cond branch alone, as CFG-skipping steps run it; then time the plan's
        reconstruction kernels on the one-branch outputs."""
        adapter = self.adapter
        outputs: dict[str, tuple] = {}
        calls = {per: lambda: forward(*args, **kwargs)}
        with self.quiet(), torch.no_grad():
            if per > 1:  # the first call carries the first ``per`` branches of the call order
                cond = [b for b in adapter.call_order if b in plan.branches][:per].index("cond")
                one_args, one_kwargs = adapter.batch_inputs_of(plan.sites[0]).select(args, kwargs, per, [cond])
                calls[1] = lambda: forward(*one_args, **one_kwargs)
                calls[1]()  # warm up the new shape
            # interleaved, so that both branch counts see the machine alike; each site's fastest counts
            runs = [(n, time_sites(adapter, plan.sites, call, outputs if n == 1 else None))
                    for _ in range(TIMED_CALLS) for n, call in calls.items()]
            seconds = {n: {site: min(times[site] for m, times in runs if m == n) for site in runs[0][1]} for n in calls}
            return seconds, time_kernels(plan, outputs, kernels, adapter.model)
