"""The user-facing API: enable, disable, enabled and the Session."""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any, Callable, Iterator, Sequence

import torch

from .adapter import Adapter, find_adapter
from .cost import measure_sites
from .config import CacheConfig, ConfigLike, load_config
from .errors import EnableError
from .plan import CompiledPlan, Prediction, StepPlan
from .planner import build_plan, check_selections, planned_sites
from .registry import registry
from .report import Report, idle_policy_warnings
from .runtime import Run, Runtime
from .sites import BRANCHES

_MARK = "_cachekit_session"


class Session:
    """One enablement of cachekit on a model: its config, plans, hooks and the last run's record."""

    def __init__(self, model: torch.nn.Module, config: CacheConfig, adapter: Adapter, pipe: Any = None,
                 num_inference_steps: int | None = None, cfg: bool = False,
                 timesteps: Sequence[float] | None = None) -> None:
        self.model = model
        self.config = config
        self.adapter = adapter
        self.pipe = pipe
        self.bare_steps = num_inference_steps
        self.bare_cfg = cfg
        self.bare_timesteps = tuple(timesteps) if timesteps is not None else None
        self.sites = adapter.validate()
        check_selections(config.policies, self.sites)
        self.planned_sites = planned_sites(self.sites, config.policies)
        self.policies_by_name = {p.name: p for p in config.policies}
        self.runtime = Runtime(self, self.planned_sites)
        self.plan: StepPlan | None = None
        self.prediction: Prediction | None = None
        self.plans_built = 0
        self.last_report: Report | None = None
        self._last_run: Run | None = None
        self._plans: dict[tuple, tuple[StepPlan, CompiledPlan, dict[str, Callable]]] = {}
        self._profiles: dict[tuple, tuple[dict, dict, dict, dict]] = {}
        self._predictions: dict[tuple, Prediction | None] = {}
        self._scheduler_patches: list[tuple[Any, str, Any]] = []
        if num_inference_steps is not None:
            self.plan_for(num_inference_steps, timesteps, cfg=cfg)  # fail at enable time, not mid-run

    # -- planning -------------------------------------------------------------------------------

    def branches(self, cfg: bool) -> tuple[str, ...]:
        return BRANCHES if cfg else ("cond",)

    def plan_for(self, num_steps: int, timesteps: Sequence[float] | None = None, cfg: bool = True) -> StepPlan:
        """The plan for a run of ``num_steps`` (optionally with its timesteps), built once and cached."""
        return self._compiled(num_steps, timesteps, self.branches(cfg))[0]

    def _compiled(self, num_steps: int, timesteps: Sequence[float] | None,
                  branches: tuple[str, ...]) -> tuple[StepPlan, CompiledPlan, dict[str, Callable]]:
        """The plan, its flat table and its resolved kernels, built once per schedule and branches."""
        key = (num_steps, tuple(timesteps) if timesteps is not None else None, branches)
        if key not in self._plans:
            plan = build_plan(self.config.policies, self.sites, branches, num_steps, timesteps)
            split = self.adapter.cfg_layout == "split"
            compiled = plan.compile(self.adapter.call_order, split)
            kernels = {name: registry().get("kernel", name) for name in compiled.kernels}  # unknown: fails here
            self._plans[key] = (plan, compiled, kernels)
            self.plans_built += 1
        return self._plans[key]

    def predict(self, plan: StepPlan) -> Prediction:
        """Predicted speedup and peak cache bytes of ``plan`` from the adapter's example inputs: one
        FLOP-counted forward for sizes, then timed forwards with every branch and with one."""
        per = len(plan.branches) if self.adapter.cfg_layout == "batched" else 1
        args, kwargs = self.adapter.example_call(per)
        with torch.no_grad(), self.runtime.suspended():
            _, flops, sizes = measure_sites(self.adapter, plan.sites, lambda: self.model(*args, **kwargs), per)
            seconds, kernels = self.runtime._time_calls(plan, self.model, args, kwargs, per)
        return self._prediction(plan, flops, sizes, seconds, kernels)

    def _prediction(self, plan: StepPlan, flops: dict[str, float], sizes: dict[str, int],
                    seconds: dict[int, dict[str, float]], kernels: dict[tuple[str, str], float]) -> Prediction | None:
        """From timed calls (and timed kernels) where they measured something, else from FLOPs
        (linear in the branches); None for a model whose work neither sees."""
        split = self.adapter.cfg_layout == "split"
        if seconds and all(times.get("denoiser", 0) > 0 for times in seconds.values()):
            return plan.predict(seconds, sizes, split, basis="seconds", kernel_cost=kernels)
        if flops.get("denoiser", 0) > 0:
            per = 1 if split else len(plan.branches)
            return plan.predict({per: {k: v * per for k, v in flops.items()}}, sizes, split, basis="flops")
        return None

    # -- run lifecycle (called by the runtime and the scheduler hooks) ---------------------------

    def _start_run(self, num_steps: int, timesteps: Sequence[float] | None, cfg: bool) -> Run:
        branches = self.branches(cfg)
        plan, compiled, kernels = self._compiled(num_steps, timesteps, branches)
        self.plan = plan
        order = tuple(b for b in self.adapter.call_order if b in branches)
        run = Run(plan, compiled, order, kernels)
        self.runtime.run = run
        return run

    def _start_pipeline_run(self, timesteps: Sequence[float]) -> None:
        self._start_run(len(timesteps), timesteps, self.adapter.cfg_active(self.pipe))

    def _start_bare_run(self) -> Run | None:
        if self.bare_steps is None:
            return None  # a pipeline's transformer called outside a pipeline run: compute normally
        return self._start_run(self.bare_steps, self.bare_timesteps, self.bare_cfg)

    def calls_per_step(self, run: Run) -> int:
        return len(run.plan.branches) if self.adapter.cfg_layout == "split" else 1

    def _end_step(self) -> None:
        run = self.runtime.run
        if run is None:
            return
        run.step_ends.append(time.perf_counter())
        run.step += 1
        run.calls = 0
        if run.step == run.plan.num_steps:
            self._finish_run(run)
        else:
            run.row = run.ops[run.step]

    def _finish_run(self, run: Run) -> None:
        self.runtime.run = None
        run.clear()
        self._last_run, self.last_report = run, None
        for message in idle_policy_warnings(self.config.policies, run):
            warnings.warn(message, stacklevel=4)

    def _abort_run(self) -> None:
        run = self.runtime.run
        if run is not None:
            run.clear()
        self.runtime.run = None

    def _needs_profile(self, run: Run, signature: tuple) -> bool:
        """Profile once per input signature and branch count; every plan reuses the measurements."""
        profile = self._profiles.get((signature, run.plan.branches))
        if profile is None:
            return True
        key = (id(run.plan), signature)
        if key not in self._predictions:
            self._predictions[key] = self._prediction(run.plan, *profile)
        run.prediction = self.prediction = self._predictions[key]
        return False

    def _record_profile(self, run: Run, signature: tuple, flops: dict[str, float], sizes: dict[str, int],
                        seconds: dict[int, dict[str, float]], kernels: dict[tuple[str, str], float]) -> None:
        self._profiles[(signature, run.plan.branches)] = (flops, sizes, seconds, kernels)
        prediction = self._predictions[(id(run.plan), signature)] = self._prediction(run.plan, flops, sizes, seconds, kernels)
        run.prediction = self.prediction = prediction

    # -- user-facing ----------------------------------------------------------------------------

    def report(self) -> Report:
        """What the last finished run did: decisions, hit rates, predicted vs measured, cache bytes."""
        if self._last_run is None:
            raise EnableError("no run has finished in this session yet; run the pipeline first")
        if self.last_report is None:
            self.last_report = Report.from_run(self, self._last_run)
        return self.last_report

    def _patch_scheduler(self, scheduler: Any) -> None:
        session = self

        def set_timesteps(*args: Any, **kwargs: Any) -> Any:
            result = original_set(*args, **kwargs)
            session._start_pipeline_run([float(t) for t in scheduler.timesteps.tolist()])
            return result

        def step(*args: Any, **kwargs: Any) -> Any:
            result = original_step(*args, **kwargs)
            session._end_step()
            return result

        original_set, original_step = scheduler.set_timesteps, scheduler.step
        for name, fn in (("set_timesteps", set_timesteps), ("step", step)):
            self._scheduler_patches.append((scheduler, name, scheduler.__dict__.get(name)))
            setattr(scheduler, name, fn)

    def _unpatch_scheduler(self) -> None:
        for scheduler, name, previous in reversed(self._scheduler_patches):
            if previous is None:
                scheduler.__dict__.pop(name, None)
            else:
                setattr(scheduler, name, previous)
        self._scheduler_patches.clear()


def _split_target(target: Any) -> tuple[torch.nn.Module, Any]:
    if isinstance(target, torch.nn.Module) and not hasattr(target, "transformer"):
        return target, None
    model = getattr(target, "transformer", None)
    if not isinstance(model, torch.nn.Module):
        raise EnableError(f"cannot enable cachekit on {type(target).__name__}: pass a diffusers pipeline with a "
                          "`transformer`, or the transformer module itself")
    return model, target


def enable(target: Any, config: ConfigLike = "reuse", *, num_inference_steps: int | None = None, cfg: bool = False,
           timesteps: Sequence[float] | None = None) -> Session:
    """Enable cachekit on a diffusers pipeline (the run's schedule is learned from its scheduler) or on
    a bare transformer (pass ``num_inference_steps``, ``cfg=True`` if its calls carry CFG branches, and
    the run's ``timesteps`` if a window is given in timestep units)."""
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
    if timesteps is not None and len(timesteps) != num_inference_steps:
        raise EnableError(f"{len(timesteps)} timesteps given for num_inference_steps={num_inference_steps}")
    session = Session(model, load_config(config), find_adapter(model, pipe), pipe, num_inference_steps, cfg, timesteps)
    session.runtime.install()
    if pipe is not None:
        session._patch_scheduler(pipe.scheduler)
    setattr(model, _MARK, session)
    return session


def disable(target: Any) -> None:
    """Remove every hook and all cached state; the model behaves exactly as if never enabled."""
    model, _ = _split_target(target)
    session: Session | None = model.__dict__.get(_MARK)
    if session is None:
        raise EnableError(f"{type(model).__name__} has no cachekit session to disable")
    session.runtime.uninstall()
    session._unpatch_scheduler()
    delattr(model, _MARK)


@contextlib.contextmanager
def enabled(target: Any, config: ConfigLike = "reuse", **kwargs: Any) -> Iterator[Session]:
    """``with cachekit.enabled(pipe, "reuse") as session: ...`` — disabled on exit, even on error."""
    session = enable(target, config, **kwargs)
    try:
        yield session
    finally:
        disable(target)
