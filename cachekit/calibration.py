"""Calibration: one uncached run of a pipeline measures the per-step magnitude ratios of its block
stack's residual (MagCache) and writes them, with what they were measured on, into a config file.

The ratio of step s is diffusers' (``MagCacheBlockHook._perform_calibration_step``): the mean over
tokens of ``||r_s|| / (||r_{s-1}|| + 1e-8)``, norms along the last dim in float32, ``r`` the stack's
residual (its last block's hidden-states output minus its first block's hidden-states input); 1.0
at the first step. One list per decision unit: per CFG branch where the pipeline calls the
transformer once per branch (the unconditional list is written only where it differs from the
conditional one), one for the call where a call carries every branch. On a two-expert pipeline
(Wan 2.2: ``transformer`` for timesteps ``>= boundary_ratio * num_train_timesteps``,
``transformer_2`` below) each expert gets its own lists, each starting at 1.0 at its first step.

The run goes through the runtime with one private policy that computes the stack at every step and
observes it, so the pipeline's outputs are those of an uncached run.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import pathlib
import struct
import warnings
from typing import Any, Callable, ClassVar, Sequence

import attrs
import torch

from .adapter import adapter_for, forward_parameters
from .clock import RunClock
from .config import CacheConfig, dump_config, from_dict
from .errors import EnableError
from .planner import prepare_sites
from .policy import Action, OnlineContext, OnlinePolicy, RunInfo
from .hooks import is_hooked
from .runtime import Runtime
from .sites import STACK, Selector, Site
from .values import residual_inputs

#: Added to the previous step's norms, as diffusers does, so that a zero residual gives no infinity.
EPS = 1e-8
#: Keyword arguments of a pipeline call recorded in the provenance table when they are plain values.
RECORDED_KWARGS = ("guidance_scale", "guidance_scale_2", "height", "width", "num_frames")


def f32(value: float) -> float:
    """``value`` rounded to float32, as a tensor comparison with a Python number rounds it."""
    return struct.unpack("f", struct.pack("f", value))[0]


@attrs.frozen(kw_only=True)
class Observer(OnlinePolicy):
    """A private policy for one measuring run: it computes every node it plans and observes it (as a
    policy's ``observe`` would), so the run's outputs are the uncached run's. Subclasses record."""

    records = True

    def plan_site(self, site: Site, branch: str, steps: Sequence[int], run: RunInfo) -> dict[int, Action]:
        return {step: Action.compute(observe=True) for step in steps}

    def decide(self, context: OnlineContext) -> bool:
        return False


@attrs.frozen(kw_only=True)
class _Recorder(Observer):
    """Computes the block stack at every step and records each decision unit's magnitude ratios."""

    type_name: ClassVar[str] = "magcache-calibration"

    sites: Selector = attrs.field(factory=lambda: Selector(kinds=(STACK,)))
    scope: str = "call"
    #: The first block's forward parameters and the input names the stack's outputs match.
    params: tuple[str, ...] = ()
    names: tuple[str, ...] | None = None
    #: The timestep where the second expert takes over (None: one model).
    boundary: float | None = None
    #: (unit, expert) -> step -> ratio (a 0-d tensor); (unit, expert) -> (step, per-token norms).
    ratios: dict = attrs.field(factory=dict, eq=False, hash=False)
    norms: dict = attrs.field(factory=dict, eq=False, hash=False)

    def expert(self, timestep: float | None) -> int:
        if self.boundary is None:
            return 0
        if timestep is None:
            raise EnableError("a two-expert pipeline's calibration needs the run's timesteps")
        return 0 if f32(timestep) >= f32(self.boundary) else 1

    def observe(self, context: OnlineContext, output: tuple) -> None:
        entry = residual_inputs(self.params, context.inputs, context.kwargs, self.names)[0][1]
        norm = torch.linalg.norm((output[0] - entry).float(), dim=-1)
        key = (context.branch, self.expert(context.timestep))
        previous = self.norms.get(key)
        if previous is None or previous[0] >= context.step:  # the first step (or its repeat)
            ratio = torch.ones((), dtype=torch.float32)
        else:
            ratio = (norm / (previous[1] + EPS)).mean()
        self.norms[key] = (context.step, norm)
        self.ratios.setdefault(key, {})[context.step] = ratio


@attrs.frozen
class Calibration:
    """What one calibration run measured: per (decision unit, expert) the ratio of each step."""

    ratios: dict[tuple[str, int], list[float]]
    num_steps: int
    branches: tuple[str, ...]
    cfg_layout: str
    boundary: float | None
    provenance: dict[str, Any]

    def entry(self) -> dict[str, Any]:
        """The ``magcache`` policy entry: the conditional (or joined) unit's ratios as ``mag_ratios``,
        the unconditional branch's as ``mag_ratios_uncond`` where they differ, the second expert's as
        ``mag_ratios_2`` (``_uncond``) with ``boundary``."""
        entry: dict[str, Any] = {"type": "magcache"}
        units = sorted({unit for unit, _ in self.ratios})
        main = "cond" if "cond" in units else units[0]
        for expert, suffix in ((0, ""), (1, "_2")):
            if (main, expert) not in self.ratios:
                continue
            ratios = self.ratios[(main, expert)]
            entry[f"mag_ratios{suffix}"] = ratios
            uncond = self.ratios.get(("uncond", expert)) if main != "uncond" else None
            if uncond is not None and uncond != ratios:
                entry[f"mag_ratios{suffix}_uncond"] = uncond
        if "mag_ratios_2" in entry:
            entry["boundary"] = self.boundary
        entry["calibrated"] = self.provenance
        return entry

    def config(self) -> CacheConfig:
        return from_dict({"policy": [self.entry()]}, "calibration")

    def toml(self) -> str:
        """The config file: a comment saying what was measured, then the entry."""
        p = self.provenance
        lines = [f"# MagCache magnitude ratios measured by `cachekit calibrate` on {p['model']} "
                 f"({p['pipeline']}), {self.num_steps} steps of {p['scheduler']}, CFG {p['cfg']}.",
                 "# Ratios are per step; a run of another step count maps them by diffusers' nearest rule.",
                 "# threshold, max_skips (K) and retention_ratio are MagCache's defaults: tune them here."]
        return "\n".join(lines) + "\n" + dump_config(self.config())


def pipeline_parts(target: Any) -> tuple[torch.nn.Module, Any]:
    model = getattr(target, "transformer", None)
    if not isinstance(model, torch.nn.Module) or not callable(target):
        raise EnableError(f"cannot calibrate {type(target).__name__}: calibration runs a diffusers pipeline "
                          "(an object with a `transformer` that generates when called)")
    model = getattr(model, "_orig_mod", model)  # a torch.compile'd transformer: its hooks are the original's
    if getattr(model, "is_cache_enabled", False):
        raise EnableError(f"{type(model).__name__} has diffusers' own cache enabled; call transformer.disable_cache() first")
    if is_hooked(model):
        raise EnableError(f"{type(model).__name__} has a cachekit session; call cachekit.disable() before calibrating")
    return model, target


def _boundary(pipe: Any) -> float | None:
    """The timestep where ``transformer_2`` takes over (WanPipeline's rule), None for one model."""
    ratio = getattr(getattr(pipe, "config", None), "boundary_ratio", None)
    if getattr(pipe, "transformer_2", None) is None or ratio is None:
        return None
    return ratio * pipe.scheduler.config.num_train_timesteps


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return value if isinstance(value, (str, bool, int, float)) else None


def observed_run(pipe: Any, model: torch.nn.Module, adapter: Any, sites: Sequence[Site], observer: Observer,
                 call: Callable[[], Any]) -> tuple[Any, Any]:
    """Run ``call()`` (one call of ``pipe``) once through a runtime whose only policy is ``observer`` (an online
    policy that computes every node it plans and observes it, so the outputs are the uncached run's);
    returns the finished run (None if no step ran) and the pipeline's output. Nothing stays installed."""
    clock = RunClock(model, adapter.cfg_layout, adapter.call_order, pipe, adapter.run_branches, None, None, False,
                     adapter.timestep_input, adapter.step_calls, adapter.loop_steps)
    runtime = Runtime(adapter, (observer,), prepare_sites(sites, (observer,)), clock)
    runtime.install()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=f"policy '{observer.type_name}'")  # computes by design
            output = call()
    finally:
        runtime.release()
        runtime.uninstall()
    return runtime.last_run, output


def measure(target: Any, adapter: Any = None, **call_kwargs: Any) -> Calibration:
    """Run ``target(**call_kwargs)`` once, uncached, and return the ratios it measured."""
    model, pipe = pipeline_parts(target)
    chosen = adapter_for(model, adapter, pipe)
    sites = chosen.validate()
    stack = next((s for s in sites if s.kind == STACK), None)
    if stack is None:
        raise EnableError(f"adapter '{chosen.name}' exposes no block stack on {type(model).__name__}; "
                          "MagCache's ratios are measured on the stack's residual")
    names = stack.residual if isinstance(stack.residual, tuple) else None
    params = forward_parameters(model.get_submodule(stack.span[0]))[0]
    recorder = _Recorder(params=params, names=names, boundary=_boundary(pipe))
    run, _ = observed_run(pipe, model, chosen, sites, recorder, lambda: pipe(**call_kwargs))
    if run is None or not recorder.ratios:
        raise EnableError(f"the pipeline call ran no denoising step through {type(model).__name__}'s block stack")
    ratios = {key: torch.stack([steps[s] for s in sorted(steps)]).tolist() for key, steps in recorder.ratios.items()}
    layout = "none" if run.plan.branches == ("cond",) else chosen.cfg_layout
    scheduler = pipe.scheduler
    provenance: dict[str, Any] = {
        "model": type(model).__name__, "pipeline": type(pipe).__name__, "steps": run.plan.num_steps,
        "scheduler": type(scheduler).__name__, "cfg": layout,
    }
    shift = _plain(getattr(scheduler.config, "shift", None)) if hasattr(scheduler, "config") else None
    if shift is not None:
        provenance["shift"] = shift
    for name in RECORDED_KWARGS:
        value = _plain(call_kwargs.get(name))
        if value is not None:
            provenance[name] = value
    for expert in (0, 1) if recorder.boundary is not None else ():
        provenance[f"expert_{expert + 1}_steps"] = max((len(r) for (_, e), r in ratios.items() if e == expert), default=0)
    provenance = {k: v for k, v in provenance.items() if v is not None}
    provenance["cachekit"] = _version()
    provenance["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return Calibration(ratios, run.plan.num_steps, run.plan.branches, layout, recorder.boundary, provenance)


def _version() -> str:
    try:
        return importlib.metadata.version("cachekit")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree on sys.path
        return "unknown"


def calibrate(target: Any, out: str | pathlib.Path | None = None, *, adapter: Any = None,
              **call_kwargs: Any) -> CacheConfig:
    """Run the pipeline ``target`` once uncached with ``call_kwargs`` (its own arguments: prompt,
    num_inference_steps, guidance_scale, ...), measure MagCache's per-step magnitude ratios of its
    block stack, and return a config with one ``magcache`` entry holding them and their provenance;
    ``out``: also write it as a TOML file, which ``cachekit.enable(pipe, out)`` loads."""
    calibration = measure(target, adapter, **call_kwargs)
    if out is not None:
        path = pathlib.Path(out)
        if path.suffix != ".toml":
            raise EnableError(f"calibrate writes TOML: {str(path)!r} should end in .toml")
        path.write_text(calibration.toml(), encoding="utf-8")
    return calibration.config()
