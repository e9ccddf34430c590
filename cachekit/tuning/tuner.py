"""``cachekit.tune``: the best plan for this model, these prompts and this budget, found before the run.

1. Calibration: one uncached run on the calibration prompts records the trajectory (guided denoiser
   output per step, the scheduler's gain per step) and the uncached clips; it is kept on disk under
   a key of model, weights sample, scheduler, call arguments (prompts, steps, guidance, shape, seed),
   with every measurement made against it, so a second tune at another budget reruns nothing it has.
2. Search: for each forecast order (0: reuse, 1, 2) the dynamic program of :mod:`.search` gives the
   least-error static plan for every number of computed steps; the adaptive ``first_block`` policy is
   run at a few thresholds as further candidates.
3. Check: the candidates within the objective run for real on the calibration prompts (FLOPs counted,
   PSNR/SSIM against the uncached clips); the best measured one is written as a config with a
   ``[tuned]`` table of provenance. The search's error is mapped to PSNR by one scale fitted on
   the runs, ``PSNR = -10 log10(alpha * error^2)``, so the table shows predicted beside measured.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import os
import pathlib
import statistics
import warnings
from typing import Any, Callable, Sequence

import attrs
import torch

from ..api import disable, enable
from ..calibration import pipeline_parts
from ..config import CacheConfig, dump_config, from_dict
from ..errors import CachekitError
from ..evaluate import Job, psnr, ssim
from ..front import pareto
from .search import Candidate, StepErrors, best_plans, regular_plans
from .trajectory import Trajectory, fingerprint, record

#: Forecast orders searched (0: the latest computed output reused).
ORDERS = (0, 1, 2)
#: The adaptive candidates run at every tune (name, policy entry): the run-time policies that led the
#: bench's rows of their kind, each over its useful thresholds.
ADAPTIVE: tuple[tuple[str, dict[str, Any]], ...] = (
    *((f"first_block threshold {t} order 1", {"type": "first_block", "threshold": t, "order": 1})
      for t in (0.05, 0.1, 0.2, 0.3)),
    *((f"teacache threshold {t}", {"type": "teacache", "rel_l1_thresh": t}) for t in (0.05, 0.1, 0.2)),
    *((f"easycache threshold {t}", {"type": "easycache", "threshold": t, "warmup": 3}) for t in (0.1, 0.2)),
)


def cache_root() -> pathlib.Path:
    """Where calibration data is kept: ``$CACHEKIT_CACHE``, else ``$XDG_CACHE_HOME/cachekit``, else ``~/.cache/cachekit``."""
    if os.environ.get("CACHEKIT_CACHE"):
        return pathlib.Path(os.environ["CACHEKIT_CACHE"])
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "cachekit"


@attrs.define
class Store:
    """One calibration's folder: the trajectory, and every measurement made against it (by config)."""

    folder: pathlib.Path

    def trajectory(self) -> Trajectory | None:
        path = self.folder / "trajectory.pt"
        if not path.is_file():
            return None
        data = torch.load(path, weights_only=False)
        return Trajectory(data["guided"], tuple(data["gains"]), data["reference"], tuple(data["branches"]))

    def save_trajectory(self, trajectory: Trajectory) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save({"guided": trajectory.guided, "gains": list(trajectory.gains), "reference": trajectory.reference,
                    "branches": list(trajectory.branches)}, self.folder / "trajectory.pt")

    def measured(self) -> dict[str, dict[str, float]]:
        path = self.folder / "measured.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def save_measured(self, measured: dict[str, dict[str, float]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "measured.json").write_text(json.dumps(measured, indent=1, sort_keys=True))


@attrs.define
class Point:
    """One candidate: its config entry, what the search predicted and what a run measured."""

    name: str
    entry: dict[str, Any]
    error: float | None = None  # the search's predicted error (static plans)
    fraction: float | None = None  # planned share of the FLOPs (static plans)
    measured: dict[str, float] | None = None  # fraction, psnr, ssim on the calibration prompts
    predicted_psnr: float | None = None
    chosen_for: list[str] = attrs.Factory(list)

    @property
    def key(self) -> str:
        return json.dumps(self.entry, sort_keys=True)


@attrs.define
class Tuned:
    """What a tune found: per objective, the chosen config (with its provenance in its ``tuned``
    table); and every candidate it weighed."""

    configs: dict[str, CacheConfig]
    points: list[Point]
    alpha: float | None

    @property
    def config(self) -> CacheConfig:
        """The first objective's config."""
        return next(iter(self.configs.values()))

    def toml(self, objective: str | None = None) -> str:
        """The config file of ``objective`` (default: the first): a comment saying what it is, then the config."""
        config = self.configs[objective] if objective is not None else self.config
        p = config.tuned
        head = (f"# Tuned by `cachekit tune` for {p['model']} ({p['pipeline']}), {p['steps']} steps of {p['scheduler']}, "
                f"objective {p['objective']}: {p['fraction']:.3f} of the FLOPs at {p['psnr']:.2f} dB on the "
                "calibration prompts.\n")
        return head + dump_config(config)

    def table(self) -> str:
        """Every candidate run, as text: FLOPs share, predicted and measured PSNR, SSIM, the speedup its
        FLOPs allow, whether it is on the measured front (no other run has no more FLOPs and no less
        PSNR, one of them strictly), and the objectives it was chosen for."""
        rows = [p for p in self.points if p.measured is not None]
        front = {id(r["point"]) for r in pareto([{"name": q.name, "source": "cachekit", "point": q,
                                                  "compute_fraction": q.measured["fraction"], "psnr": q.measured["psnr"]}
                                                 for q in rows])}
        lines = [f"{'candidate':<44} {'FLOPs':>6} {'pred dB':>8} {'meas dB':>8} {'SSIM':>7} {'speedup':>8} "
                 f"{'front':>5}  chosen for"]
        for p in sorted(rows, key=lambda p: p.measured["fraction"]):
            pred = f"{p.predicted_psnr:8.2f}" if p.predicted_psnr is not None else f"{'n/a':>8}"
            lines.append(f"{p.name:<44} {p.measured['fraction']:6.3f} {pred} {p.measured['psnr']:8.2f} "
                         f"{p.measured['ssim']:7.4f} {1 / p.measured['fraction']:7.2f}x {'yes' if id(p) in front else '':>5}  "
                         f"{', '.join(p.chosen_for)}")
        return "\n".join(lines)

    def plot(self, path: str | pathlib.Path) -> pathlib.Path:
        """The front as PNG: predicted PSNR of the best plan per step count for each order (lines), the
        runs (dots), the chosen plans (stars)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5))
        for order in ORDERS:
            curve = sorted((p.fraction, p.predicted_psnr) for p in self.points
                           if p.name.startswith(f"searched order {order},") and p.predicted_psnr is not None)
            if curve:
                ax.plot(*zip(*curve), linewidth=1, label=f"searched, order {order} (predicted)")
        ran = [p for p in self.points if p.measured is not None]
        ax.scatter([p.measured["fraction"] for p in ran], [min(p.measured["psnr"], 100) for p in ran], s=14, color="k",
                   label="measured")
        chosen = [p for p in ran if p.chosen_for]
        ax.scatter([p.measured["fraction"] for p in chosen], [min(p.measured["psnr"], 100) for p in chosen], s=120,
                   marker="*", color="red", label="chosen")
        ax.set_xlabel("compute fraction (executed FLOPs / uncached)")
        ax.set_ylabel("PSNR against uncached (dB)")
        ax.set_title(f"cachekit tune: {self.config.tuned['model']}, {self.config.tuned['steps']} steps", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        path = pathlib.Path(path)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return path


def _objectives(budget: float | Sequence[float] | None, min_psnr: float | None) -> list[tuple[str, float]]:
    if (budget is None) == (min_psnr is None):
        raise CachekitError("tune needs one objective: budget=F (at most F of the uncached FLOPs, 0 < F <= 1) or "
                            "min_psnr=D (the fewest FLOPs at D dB or more)")
    if min_psnr is not None:
        if not isinstance(min_psnr, (int, float)) or not math.isfinite(min_psnr):
            raise CachekitError(f"min_psnr={min_psnr!r}: expected a number of dB, e.g. 40")
        return [("min_psnr", float(min_psnr))]
    budgets = [budget] if isinstance(budget, (int, float)) else list(budget)
    for f in budgets:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise CachekitError(f"budget={f!r}: expected a share of the uncached FLOPs in (0, 1], e.g. 0.5")
    return [("budget", float(f)) for f in budgets]


def _objective_name(kind: str, value: float) -> str:
    return f"budget {value:g}" if kind == "budget" else f"min_psnr {value:g}"


class _Tuner:
    """One tune's state: the job, the calibration, the candidates and their measurements."""

    def __init__(self, job: Job, prompts: Sequence[str], seed: int, store: Store, progress: Callable[[str], None]) -> None:
        self.job, self.prompts, self.seed, self.store, self.progress = job, list(prompts), seed, store, progress
        self.twin: Any = None
        self.measured = store.measured()

    def calibrate(self, guidance: float) -> Trajectory:
        found = self.store.trajectory()
        if found is not None:
            self.progress(f"calibration: reused {self.store.folder}")
            return found
        self.progress(f"calibration: one uncached run on {len(self.prompts)} prompts, seed {self.seed}")
        pipe = self.job.pipe
        pipe.set_progress_bar_config(**{**getattr(pipe, "_progress_bar_config", {}), "desc": "calibration (uncached)"})
        trajectory = record(pipe, lambda: self.job.generate(pipe, self.prompts, self.seed), guidance)
        self.store.save_trajectory(trajectory)
        return trajectory

    def measure(self, point: Point, reference: torch.Tensor) -> dict[str, float]:
        if point.key not in self.measured:
            if self.twin is None:
                self.twin = copy.deepcopy(self.job.pipe)
            self.twin.set_progress_bar_config(**{**getattr(self.twin, "_progress_bar_config", {}), "desc": point.name})
            session = enable(self.twin, {"policy": [point.entry]})
            try:
                with warnings.catch_warnings():  # a threshold too tight for this model is a candidate like any other
                    warnings.filterwarnings("ignore", message="policy '.*' made no decision other than compute")
                    clips = self.job.generate(self.twin, self.prompts, self.seed)
            finally:
                disable(self.twin)
            per_clip = [min(psnr(r[None], c[None]), 100.0) for r, c in zip(reference, clips)]
            self.measured[point.key] = {"fraction": session.report().compute_fraction,
                                        "psnr": statistics.fmean(per_clip), "ssim": ssim(reference, clips),
                                        "mse": float(((reference.double() - clips.double()) ** 2).mean())}
            self.store.save_measured(self.measured)
        point.measured = self.measured[point.key]
        return point.measured


def _schedule_point(candidate: Candidate, kind: str = "searched") -> Point:
    """A ``schedule`` candidate; ``kind``: found by the search, or a regular plan."""
    entry = {"type": "schedule", "compute": list(candidate.computed), "num_steps": candidate.num_steps,
             "order": candidate.order}
    return Point(f"{kind} order {candidate.order}, {len(candidate.computed)}/{candidate.num_steps} steps", entry,
                 candidate.error, candidate.fraction)


#: Regular plans (warm-up, interval, tail) run at each budget besides the searched ones: the best by
#: predicted error, since the search's additive error can misjudge how errors made at different
#: steps combine.
REGULAR_TRIALS = 3


def _regular(errors: StepErrors, n: int, most: int, by_key: dict[str, Point], points: list[Point]) -> list[Point]:
    """The ``REGULAR_TRIALS`` regular order-2 plans of at most ``most`` computed steps with the least
    predicted error, as points (added to ``points`` and ``by_key`` when new)."""
    ranked = sorted(regular_plans(n, most, 2), key=lambda c: (errors.plan_error(c.computed, 2), c.computed))
    chosen = []
    for candidate in ranked[:REGULAR_TRIALS]:
        point = _schedule_point(attrs.evolve(candidate, error=errors.plan_error(candidate.computed, 2)), "regular")
        point = by_key.setdefault(point.key, point)
        if point not in points:
            points.append(point)
        chosen.append(point)
    return chosen


def _trials(kind: str, value: float, n: int, plans: dict[int, dict[int, Candidate]], errors: StepErrors,
            by_key: dict[str, Point], points: list[Point], alpha: float | None) -> list[Point]:
    """The candidates to run for one objective: at a budget, the searched plan of each order with the
    most computed steps it allows and the best regular plans within it; at a PSNR floor, the two
    cheapest searched plans of each order that the fitted prediction puts above it."""
    if kind == "budget":
        m = max(1, math.floor(value * n + 1e-9))
        trials = [by_key[_schedule_point(plans[o][m]).key] for o in ORDERS if m in plans[o]]
        return trials + _regular(errors, n, m, by_key, points)

    def above(c: Candidate) -> bool:
        return c.error == 0 or (alpha is not None and -10 * math.log10(alpha * c.error**2) >= value)

    trials = []
    for order in ORDERS:
        fitting = [c for _, c in sorted(plans[order].items()) if above(c)]
        trials += [by_key[_schedule_point(c).key] for c in fitting[:2]]
    return trials


def _fit_alpha(points: Sequence[Point]) -> float | None:
    """The scale mapping the search's error to the clips' MSE, fitted on the measured static plans."""
    logs = [math.log(p.measured["mse"]) - 2 * math.log(p.error) for p in points
            if p.measured is not None and p.error and p.measured["mse"] > 0]
    return math.exp(statistics.fmean(logs)) if logs else None


def tune_job(job: Job, *, budget: float | Sequence[float] | None = None, min_psnr: float | None = None,
             prompts: Sequence[str] | None = None, seed: int = 1000, holdout: Sequence[str] = (),
             holdout_seeds: Sequence[int] = (0,),
             max_gap: int = 6, cache_dir: str | pathlib.Path | None = None,
             progress: Callable[[str], None] = print) -> Tuned:
    """Tune on ``job``'s pipeline (see :func:`tune`); ``prompts`` default to the job's first eight.
    ``holdout``: prompts not used in calibration on which each chosen plan is measured as well (at
    ``holdout_seeds``), recorded in its ``[tuned]`` table."""
    objectives = _objectives(budget, min_psnr)
    prompts = list(prompts or job.prompts[:8])
    if job.call_kwargs is None:
        raise CachekitError("tune needs the pipeline's call arguments: build the job with evaluate.pipeline_job")
    model, pipe = pipeline_parts(job.pipe)
    call = job.call_kwargs(prompts, seed)
    guidance = float(call.get("guidance_scale", 1.0) or 1.0)
    key = fingerprint(model, pipe, call)
    tuner = _Tuner(job, prompts, seed, Store(pathlib.Path(cache_dir or cache_root() / "tune") / key), progress)
    trajectory = tuner.calibrate(guidance)
    reference = trajectory.reference
    n = trajectory.num_steps

    progress(f"search: best plan for every step count, orders {', '.join(map(str, ORDERS))} (max {max_gap - 1} "
             "forecast steps in a row)")
    errors = StepErrors(trajectory.guided, trajectory.gains)
    plans = {order: best_plans(errors, order, max_gap) for order in ORDERS}
    points = [_schedule_point(c) for order in ORDERS for c in plans[order].values()]
    adaptive = [Point(name, entry) for name, entry in ADAPTIVE]
    by_key = {p.key: p for p in points + adaptive}

    def run(point: Point) -> dict[str, float]:
        return tuner.measure(point, reference)

    for point in adaptive:
        run(point)
    # the scale from error to MSE: fitted on the plans at half the steps, then on every plan run
    for order in ORDERS:
        if n // 2 in plans[order]:
            run(by_key[_schedule_point(plans[order][n // 2]).key])
    chosen: dict[str, Point] = {}
    for kind, value in objectives:
        name = _objective_name(kind, value)
        trials = _trials(kind, value, n, plans, errors, by_key, points, _fit_alpha(points))
        for point in trials:
            run(point)
        eligible = [p for p in (*points, *adaptive) if p.measured is not None and
                    (p.measured["fraction"] <= value + 1e-9 if kind == "budget" else p.measured["psnr"] >= value)]
        if not eligible:
            raise CachekitError(f"no plan meets {name} on the calibration prompts (measured: "
                                + ", ".join(f"{p.measured['fraction']:.2f}/{p.measured['psnr']:.1f} dB"
                                            for p in trials if p.measured) + "); loosen the objective")
        best = (max(eligible, key=lambda p: (p.measured["psnr"], -p.measured["fraction"])) if kind == "budget"
                else min(eligible, key=lambda p: (p.measured["fraction"], -p.measured["psnr"])))
        best.chosen_for.append(name)
        chosen[name] = best
    alpha = _fit_alpha(points)
    for point in points:
        if alpha is not None and point.error is not None:
            point.predicted_psnr = 100.0 if point.error == 0 else min(100.0, -10 * math.log10(alpha * point.error**2))
    configs, references = {}, {}
    for name, best in chosen.items():
        provenance = _provenance(model, pipe, call, key, prompts, seed, n, name, best, trajectory)
        if holdout:
            provenance.update(_holdout(job, best, holdout, holdout_seeds, references, progress))
        configs[name] = from_dict({"policy": [best.entry], "tuned": provenance}, "tune")
    return Tuned(configs, points + adaptive, alpha)


def _provenance(model: Any, pipe: Any, call: dict[str, Any], key: str, prompts: Sequence[str], seed: int, n: int,
                objective: str, best: Point, trajectory: Trajectory) -> dict[str, Any]:
    from ..calibration import RECORDED_KWARGS, _plain, _version

    provenance: dict[str, Any] = {
        "model": type(model).__name__, "pipeline": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__,
        "steps": n, "cfg": "+".join(trajectory.branches), "shape": list(trajectory.guided.shape[1:]),
        "calibration_key": key, "prompts": list(prompts), "seed": seed, "objective": objective,
        "fraction": round(best.measured["fraction"], 4), "psnr": round(best.measured["psnr"], 3),
        "ssim": round(best.measured["ssim"], 5),
    }
    if best.predicted_psnr is not None:
        provenance["predicted_psnr"] = round(best.predicted_psnr, 3)
    for name in RECORDED_KWARGS:
        value = _plain(call.get(name))
        if value is not None:
            provenance[name] = value
    provenance["cachekit"] = _version()
    provenance["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return provenance


def _holdout(job: Job, best: Point, prompts: Sequence[str], seeds: Sequence[int], references: dict[int, torch.Tensor],
             progress: Callable[[str], None]) -> dict[str, Any]:
    """PSNR/SSIM of the chosen plan on ``prompts`` at ``seeds`` (``references``: the uncached clips
    per seed, filled on first use)."""
    progress(f"held out: {best.name} on {len(prompts)} prompts x seeds {', '.join(map(str, seeds))}")
    twin = copy.deepcopy(job.pipe)
    scores, similar = [], []
    for seed in seeds:
        if seed not in references:
            references[seed] = job.generate(job.pipe, prompts, seed)
        reference = references[seed]
        enable(twin, {"policy": [best.entry]})
        try:
            clips = job.generate(twin, prompts, seed)
        finally:
            disable(twin)
        scores += [min(psnr(r[None], c[None]), 100.0) for r, c in zip(reference, clips)]
        similar.append(ssim(reference, clips))
    return {"holdout_prompts": list(prompts), "holdout_seeds": list(seeds), "holdout_psnr": round(statistics.fmean(scores), 3),
            "holdout_ssim": round(statistics.fmean(similar), 5)}
