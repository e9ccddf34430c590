"""The user-facing API: enable, disable, enabled and the Session, a thin front over the rooms below."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator, Sequence

import torch

from .adapter import Adapter, adapter_for
from .clock import RunClock
from . import fields
from .copies import SESSION_ATTR
from .config import CacheConfig, ConfigLike, load_config
from .errors import EnableError
from .plan import Prediction, StepPlan
from .planner import prepare_sites
from .registry import blaming_policies
from .report import Report
from .runtime import Runtime
from .sites import BRANCHES, branch_order, check_branches

_MARK = SESSION_ATTR
#: What ``enable(pipe)`` caches with no config given: the ``quality`` preset, the best general choice
#: of ``cachekit bench`` on both embedded models (docs/benchmarks.md).
DEFAULT_CONFIG = "quality"


class Session:
    """One enablement of cachekit on a model: its config, its runtime and the last run's report."""

    def __init__(self, model: torch.nn.Module, config: CacheConfig, adapter: Adapter, pipe: Any = None,
                 num_inference_steps: int | None = None, cfg: bool | Sequence[str] = False,
                 timesteps: Sequence[float] | None = None, profile: bool = False) -> None:
        self.model = model
        self.config = config
        self.adapter = adapter
        self.pipe = pipe
        #: The sites the policies claim, of those the adapter declares (validated).
        with blaming_policies():
            self.planned_sites = prepare_sites(adapter.validate(), config.policies)
        clock = RunClock(model, adapter.cfg_layout, adapter.call_order, pipe, adapter.run_branches,
                         num_inference_steps, timesteps, cfg, adapter.timestep_input, adapter.step_calls,
                         adapter.loop_steps)
        self.runtime = Runtime(adapter, config.policies, self.planned_sites, clock, profile)
        self._report: tuple[Any, Report] | None = None
        if num_inference_steps is not None:
            self.plan_for(num_inference_steps, timesteps, cfg=cfg)  # fail at enable time, not mid-run

    @property
    def plan(self) -> StepPlan | None:
        """The plan of the latest run started."""
        return self.runtime.plan

    @property
    def plans_built(self) -> int:
        return self.runtime.plans_built

    def plan_for(self, num_steps: int, timesteps: Sequence[float] | None = None,
                 cfg: bool | Sequence[str] = True) -> StepPlan:
        """The plan for a run of ``num_steps`` (optionally with its timesteps), built once and cached.
        ``cfg``: True for the CFG branches (uncond, cond), False for cond alone, or the run's branches
        by name (one of the adapter's ``call_order`` each, "cond" among them)."""
        return self.runtime.compiled(num_steps, timesteps, run_branches(cfg, self.adapter))[0]

    def predict(self, plan: StepPlan) -> Prediction | None:
        """Predicted speedup and peak cache bytes of ``plan`` from the adapter's example inputs: one
        FLOP-counted forward for sizes, then timed forwards with every branch and with one."""
        return self.runtime.predict(plan)

    def hooked_modules(self) -> tuple[str, ...]:
        """The qualified names of the modules cachekit hooks (\"\" for the transformer itself), in the
        order they were hooked: under ``torch.compile`` a call of each is a graph break, and compiling
        one with ``fullgraph=True`` is refused; the modules below them compile whole."""
        names = {module: name for name, module in self.model.named_modules()}
        return tuple(dict.fromkeys(names[module] for module in self.runtime.hooked_modules()))

    def report(self) -> Report:
        """What the last finished run did: decisions, hit rates, predicted vs measured, cache bytes."""
        run = self.runtime.last_run
        if run is None:
            current = self.runtime.run
            if self.pipe is None and current is not None:  # a hand-written loop shorter than declared
                raise EnableError(f"no run has finished in this session yet: the current run has made "
                                  f"{current.step + 1} of its {current.plan.num_steps} steps, and a bare model's run is the "
                                  "num_inference_steps given to cachekit.enable; pass the loop's step count there")
            raise EnableError("no run has finished in this session yet; run the pipeline first")
        if self._report is None or self._report[0] is not run:
            self._report = (run, Report.from_run(self.config.policies, run))
        return self._report[1]

    def reports(self) -> tuple[Report, ...]:
        """One report per denoising loop of the latest pipeline call, in order: a pipeline that samples
        in stages, sections or segments runs a loop for each, each its own run (planned for its own
        step count, nothing cached across loops). One report for an ordinary call."""
        runs = self.runtime.call_runs
        if not runs:
            self.report()  # raises, saying why there is nothing to report
        return tuple(self.report() if run is self.runtime.last_run else Report.from_run(self.config.policies, run)
                     for run in runs)


def run_branches(cfg: Any, adapter: Adapter) -> tuple[str, ...]:
    """The branches ``cfg`` asks for: True the CFG branches, False "cond", or the branches named
    (checked against the adapter's ``call_order``); an EnableError names what is wrong."""
    if not isinstance(cfg, (list, tuple)):
        return BRANCHES if cfg else ("cond",)
    try:
        return branch_order(check_branches(cfg, adapter.call_order, "cfg"), adapter.call_order)
    except ValueError as error:
        raise EnableError(f"{error}; or pass cfg=True (uncond and cond) or cfg=False (cond alone)") from None


def _unwrap(model: Any) -> Any:
    """A ``torch.compile``d module's original module (its hooks are what the compiled one calls)."""
    if not isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        return model
    if getattr(model.dynamo_ctx, "fullgraph", False):
        raise EnableError(f"{type(model._orig_mod).__name__} was compiled with fullgraph=True, and cachekit's hooks run "
                          "their bookkeeping outside the graph: compile it with fullgraph=False, or compile its blocks' "
                          "submodules below cachekit's hooks with fullgraph=True (session.hooked_modules() lists them)")
    return model._orig_mod


def _split_target(target: Any) -> tuple[torch.nn.Module, Any]:
    if isinstance(target, torch.nn.Module) and not hasattr(target, "transformer"):
        return _unwrap(target), None
    model = _unwrap(getattr(target, "transformer", None))
    if not isinstance(model, torch.nn.Module):
        raise EnableError(f"cannot enable cachekit on {type(target).__name__}: pass a diffusers pipeline with a "
                          "`transformer`, or the transformer module itself")
    if getattr(target, "scheduler", None) is None:
        raise EnableError(f"{type(target).__name__} has a `transformer` but no `scheduler`, which cachekit reads each "
                          "run's steps from; enable the transformer itself with num_inference_steps=... (and cfg=...)")
    return model, target


def enable(target: Any, config: ConfigLike = DEFAULT_CONFIG, *, num_inference_steps: int | None = None,
           cfg: bool | Sequence[str] = False,
           timesteps: Sequence[float] | None = None, adapter: Any = None, profile: bool = False) -> Session:
    """Enable cachekit on a diffusers pipeline (each run is followed from its denoiser calls) or on
    a bare transformer (pass ``num_inference_steps``, ``cfg=True`` if its calls carry CFG branches, or
    the branches by name where its loop runs other passes too, e.g. ``cfg=("uncond", "cond",
    "uncond_stg")``, and the run's ``timesteps`` if a window is given in timestep units). ``adapter``: an Adapter subclass
    or a generic spec (mapping or file) to use instead of the registered adapter; a config file's
    ``[adapter]`` table is used the same way. The cost model counts each site's FLOPs and bytes
    during a run's own first call (no extra forward); ``profile=True`` also times the model's sites
    and kernels in uncached calls of their own, once per input shape, for a prediction in seconds."""
    model, pipe = _split_target(target)
    if hasattr(model, _MARK):
        raise EnableError(f"{type(model).__name__} already has a cachekit session; call cachekit.disable() first")
    if getattr(model, "is_cache_enabled", False):
        raise EnableError(f"{type(model).__name__} has diffusers' own cache enabled; call transformer.disable_cache() first")
    if pipe is None and num_inference_steps is None:
        raise EnableError("a bare transformer needs num_inference_steps=...; or enable the pipeline that owns it")
    if pipe is not None and (num_inference_steps is not None or timesteps is not None):
        raise EnableError("the schedule is learned from the pipeline's scheduler; pass num_inference_steps and "
                          "timesteps only for a bare transformer")
    if num_inference_steps is not None:
        fields.require_integer("num_inference_steps", num_inference_steps, lo=1)
    for t in () if timesteps is None else timesteps:
        fields.require_number("timesteps", t.item() if hasattr(t, "item") else t)
    if timesteps is not None and len(timesteps) != num_inference_steps:
        raise EnableError(f"{len(timesteps)} timesteps given for num_inference_steps={num_inference_steps}")
    loaded = load_config(config)  # parsed once: its [adapter] table, its policies
    chosen = adapter_for(model, adapter if adapter is not None else loaded.adapter, pipe)
    if pipe is not None and isinstance(cfg, (list, tuple)):
        raise EnableError("the branches of a pipeline's runs are read from the pipeline; pass cfg only for a bare "
                          "transformer")
    branches = run_branches(cfg, chosen)
    _check_tuned(loaded, model, pipe)
    session = Session(model, loaded, chosen, pipe, num_inference_steps,
                      branches if isinstance(cfg, (list, tuple)) else cfg, timesteps, profile)
    session.runtime.install()
    setattr(model, _MARK, session)
    return session


def _check_tuned(config: CacheConfig, model: torch.nn.Module, pipe: Any) -> None:
    """Warn when a tuned config meets another model or scheduler than it was tuned for: it runs as
    written, but the quality it measured does not carry over."""
    tuned = config.tuned or {}
    found = {"model": type(model).__name__,
             "scheduler": type(pipe.scheduler).__name__ if pipe is not None else tuned.get("scheduler")}
    for what, actual in found.items():
        expected = tuned.get(what)
        if expected is not None and actual != expected:
            warnings.warn(f"{config.source or 'config'} was tuned for the {what} {expected}; this one is {actual}: its "
                          "plan runs as written, but its measured quality does not apply (run cachekit tune for this "
                          "pipeline)", stacklevel=3)


def disable(target: Any) -> None:
    """Remove every hook and all cached state; the model behaves exactly as if never enabled."""
    model, _ = _split_target(target)
    session: Session | None = model.__dict__.get(_MARK)
    if session is None:
        raise EnableError(f"{type(model).__name__} has no cachekit session to disable")
    session.runtime.uninstall()
    delattr(model, _MARK)


@contextlib.contextmanager
def enabled(target: Any, config: ConfigLike = DEFAULT_CONFIG, **kwargs: Any) -> Iterator[Session]:
    """``with cachekit.enabled(pipe, "fast") as session: ...`` — disabled on exit, even on error."""
    session = enable(target, config, **kwargs)
    try:
        yield session
    finally:
        disable(target)
