"""What a run did: decisions per node, hit rates per site kind, predicted vs measured, cache bytes."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from typing import Any, Sequence

import attrs

from .policy import COMPUTE, NodeKey, Policy
from .run import Run
from .runtime import PLAN_CACHE_SIZE


@attrs.frozen
class Report:
    num_steps: int
    branches: tuple[str, ...]
    policies: tuple[str, ...]
    #: The action each node executed (online nodes: the decision taken).
    executed: dict[NodeKey, str]
    planned: dict[str, int]
    hit_rates: dict[str, float]
    predicted_speedup: float | None
    #: What the prediction's costs were: "seconds" (timed calls), "flops", or None.
    prediction_basis: str | None
    predicted_peak_cache_bytes: int | None
    measured_peak_cache_bytes: int
    #: The cache's bytes plus the buffers kept to recycle for it (CPU runs), at their peak.
    measured_peak_held_bytes: int
    step_seconds: tuple[float, ...]
    predicted_seconds: float | None
    warnings: tuple[str, ...]
    grid: str
    #: Online decisions taken in the run and the seconds their ``decide`` calls took.
    decisions: int = 0
    decide_seconds: float = 0.0
    #: The plans the session held (at most ``PLAN_CACHE_SIZE``) and had built when the run started.
    plans_held: int = 0
    plans_built: int = 0
    #: Seconds the run's first call spent profiling the model (a session's first run of a shape),
    #: which ``step_seconds`` and ``seconds`` leave out.
    profile_seconds: float = 0.0
    #: The FLOPs the run executed over an uncached run's (counted per site, None where not seen).
    compute_fraction: float | None = None

    @classmethod
    def from_run(cls, policies: Sequence[Policy], run: Run) -> "Report":
        """The report of a finished ``run`` of ``policies``."""
        plan = run.plan
        sites = plan.sites
        executed = run.executed()
        by_kind: dict[str, list[int]] = {}
        for (_, site, _), kind in executed.items():
            tally = by_kind.setdefault(sites[plan.site_index[site]].kind, [0, 0])
            tally[0] += kind != COMPUTE
            tally[1] += 1
        hit_rates = {kind: hits / total for kind, (hits, total) in sorted(by_kind.items())}
        seconds = run.step_seconds
        prediction = run.prediction
        predicted = None
        if prediction is not None and seconds:
            # Seconds per full step, from the steps the plan fully computes (step 0 warms up).
            full = [s / f for s, f in zip(seconds[1:], prediction.step_fractions[1:]) if f == 1.0] or [seconds[0] / prediction.step_fractions[0]]
            predicted = statistics.median(full) * sum(prediction.step_fractions)
        return cls(
            num_steps=plan.num_steps,
            branches=plan.branches,
            policies=tuple(f"{p.name} ({p.type_name})" for p in policies),
            executed=executed,
            planned=plan.counts(),
            hit_rates=hit_rates,
            predicted_speedup=prediction.speedup if prediction else (1.0 if plan.all_compute else None),
            prediction_basis=prediction.basis if prediction else None,
            predicted_peak_cache_bytes=prediction.peak_cache_bytes if prediction else None,
            measured_peak_cache_bytes=run.peak_bytes,
            measured_peak_held_bytes=run.peak_held_bytes,
            step_seconds=seconds,
            predicted_seconds=predicted,
            warnings=run.warnings,
            decisions=run.decisions,
            decide_seconds=run.decide_seconds,
            grid=plan.grid(lambda node: executed.get(node, "skip"), "executed (C compute, R reuse, X reconstruct, . not called), "),
            plans_held=run.plans[0],
            plans_built=run.plans[1],
            profile_seconds=run.profile_seconds,
            compute_fraction=run.compute_fraction,
        )

    @property
    def seconds(self) -> float:
        return sum(self.step_seconds)

    def counts(self) -> dict[str, int]:
        return dict(Counter(self.executed.values()))

    def counts_by_branch(self) -> dict[str, dict[str, int]]:
        """The executed action kinds of each branch of the run, in the run's branch order."""
        tallies: dict[str, Counter] = {branch: Counter() for branch in self.branches}
        for (_, _, branch), kind in self.executed.items():
            tallies.setdefault(branch, Counter())[kind] += 1
        return {branch: dict(tally) for branch, tally in tallies.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_steps": self.num_steps,
            "branches": list(self.branches),
            "policies": list(self.policies),
            "planned": self.planned,
            "executed": self.counts(),
            "executed_by_branch": self.counts_by_branch(),
            "hit_rates": self.hit_rates,
            "predicted_speedup": self.predicted_speedup,
            "prediction_basis": self.prediction_basis,
            "predicted_peak_cache_bytes": self.predicted_peak_cache_bytes,
            "measured_peak_cache_bytes": self.measured_peak_cache_bytes,
            "measured_peak_held_bytes": self.measured_peak_held_bytes,
            "seconds": self.seconds,
            "predicted_seconds": self.predicted_seconds,
            "step_seconds": list(self.step_seconds),
            "warnings": list(self.warnings),
            "decisions": self.decisions,
            "decide_seconds": self.decide_seconds,
            "plans_held": self.plans_held,
            "plans_built": self.plans_built,
            "profile_seconds": self.profile_seconds,
            "compute_fraction": self.compute_fraction,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def text(self) -> str:
        speed = f"{self.predicted_speedup:.2f}x" if self.predicted_speedup else "n/a"
        lines = [
            f"cachekit run: {self.num_steps} steps, branches {', '.join(self.branches)}",
            f"policies: {', '.join(self.policies)}",
            f"decisions executed: {self.counts()}  (planned: { {k: v for k, v in self.planned.items() if v} })",
            *(["by branch: " + "; ".join(f"{b} {c}" for b, c in self.counts_by_branch().items())]
              if len(self.branches) > 2 else []),  # beyond uncond and cond, the grid alone is hard to read
            "hit rate by site kind: " + ", ".join(f"{k} {v:.0%}" for k, v in self.hit_rates.items()),
            f"predicted speedup: {speed}" + (f" (cost model: {self.prediction_basis})" if self.prediction_basis else "")
            + (f"; executed {self.compute_fraction:.3f} of the uncached FLOPs" if self.compute_fraction is not None else ""),
            f"time: measured {self.seconds:.3f} s"
            + (f", predicted {self.predicted_seconds:.3f} s" if self.predicted_seconds is not None else "")
            + (f" (and {self.profile_seconds:.3f} s profiling the model, left out)" if self.profile_seconds else ""),
            f"peak cache: measured {_mib(self.measured_peak_cache_bytes)}"
            + (f" ({_mib(self.measured_peak_held_bytes)} with recycled buffers)"
               if self.measured_peak_held_bytes > self.measured_peak_cache_bytes else "")
            + (f", predicted {_mib(self.predicted_peak_cache_bytes)}" if self.predicted_peak_cache_bytes is not None else ""),
            *([f"online decisions: {self.decisions}, {self.decide_seconds * 1e3:.2f} ms in all "
               f"({self.decide_seconds / self.num_steps * 1e3:.3f} ms a step)"] if self.decisions else []),
            f"plans: {self.plans_held} held (at most {PLAN_CACHE_SIZE}), {self.plans_built} built in this session",
            *[f"warning: {w}" for w in self.warnings],
            "",
            self.grid,
        ]
        return "\n".join(lines)

    __str__ = text


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"
