"""Shared helpers for cachekit's benchmarks: interleaved timing, medians, ratios, result files, tables.

Timing model: every variant is warmed up, then each of R rounds calls every variant once, in an
order rotated by one position per round (so no variant always runs first or last). A variant's
figure is the median over rounds; its ratio is the median over rounds of (variant / baseline) in the
same round, which cancels slow drift of the machine better than a ratio of medians.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import attrs

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@attrs.frozen
class Variant:
    """A named callable to time. ``setup`` (optional, untimed) returns the argument ``fn`` is called with."""

    name: str
    fn: Callable[..., Any]
    setup: Callable[[], Any] | None = None

    def __call__(self) -> tuple[float, Any]:
        """One call: (wall seconds of ``fn`` only, its result)."""
        call = self.timed()
        return call.wall, call.result

    def timed(self) -> "Call":
        """One call of ``fn`` (``setup`` not measured): wall and process CPU seconds, minor page faults."""
        arg = None if self.setup is None else self.setup()
        faults = _minor_faults()
        cpu, start = time.process_time(), time.perf_counter()
        result = self.fn() if self.setup is None else self.fn(arg)
        wall = time.perf_counter() - start
        return Call(wall, time.process_time() - cpu, _minor_faults() - faults, result)


@attrs.frozen
class Call:
    """One measured call."""

    wall: float
    cpu: float
    #: Minor page faults of the process during the call (first touches of freshly mapped memory:
    #: glibc serves large tensors with mmap, so allocation patterns show up here and in the time).
    minor_faults: int
    result: Any


def _minor_faults() -> int:
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@attrs.frozen
class Timings:
    """Per-variant wall seconds, one entry per round, plus each variant's warm-up and last results."""

    names: tuple[str, ...]
    seconds: dict[str, list[float]]
    warmup_results: dict[str, Any]
    last_results: dict[str, Any]
    orders: list[tuple[str, ...]]
    #: Process CPU seconds per call, in the same order as ``seconds``: less sensitive than wall time to
    #: other processes competing for the CPUs (with one torch thread, CPU time ~ wall time when idle).
    cpu_seconds: dict[str, list[float]] = attrs.field(factory=dict)
    #: Minor page faults per call, in the same order as ``seconds``.
    minor_faults: dict[str, list[int]] = attrs.field(factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def ratios(self, name: str, baseline: str) -> list[float]:
        """Per-round ratio ``name / baseline`` (both measured in the same round)."""
        return [a / b for a, b in zip(self.seconds[name], self.seconds[baseline])]

    def median_ratio(self, name: str, baseline: str) -> float:
        return statistics.median(self.ratios(name, baseline))

    def speedups(self, name: str, baseline: str, cpu: bool = False) -> list[float]:
        """Per-round speedup ``baseline / name`` (both measured in the same round); ``cpu``: from CPU time."""
        seconds = self.cpu_seconds if cpu else self.seconds
        return [b / a for a, b in zip(seconds[name], seconds[baseline])]

    def median_speedup(self, name: str, baseline: str) -> float:
        """Median over rounds of the per-round speedup ``baseline / name``."""
        return statistics.median(self.speedups(name, baseline))

    def summary(self, baseline: str) -> list[dict[str, Any]]:
        """One row per variant: median seconds, median per-round ratio to ``baseline`` and its spread."""
        rows = []
        for name in self.names:
            ratios = self.ratios(name, baseline)
            rows.append({
                "variant": name,
                "median_s": self.median(name),
                "min_s": min(self.seconds[name]),
                "max_s": max(self.seconds[name]),
                "median_ratio": statistics.median(ratios),
                "median_cpu_ratio": statistics.median(a / b for a, b in zip(self.cpu_seconds[name], self.cpu_seconds[baseline]))
                if self.cpu_seconds.get(name) else None,
                "min_ratio": min(ratios),
                "max_ratio": max(ratios),
                "seconds": list(self.seconds[name]),
                "ratios": ratios,
            })
        return rows


def rotated(names: Sequence[str], round_index: int) -> tuple[str, ...]:
    """``names`` rotated left by ``round_index`` positions."""
    k = round_index % len(names)
    return tuple(names[k:]) + tuple(names[:k])


def time_interleaved(variants: Sequence[Variant], rounds: int, warmup: int = 1,
                     progress: Callable[[str], None] | None = None) -> Timings:
    """Warm up each variant ``warmup`` times, then time ``rounds`` rounds of every variant once each,
    in an order rotated by one per round."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    names = tuple(v.name for v in variants)
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique: {names}")
    by_name = {v.name: v for v in variants}
    warmup_results: dict[str, Any] = {}
    for _ in range(warmup):
        for variant in variants:
            _, warmup_results[variant.name] = variant()
    seconds: dict[str, list[float]] = {n: [] for n in names}
    cpu_seconds: dict[str, list[float]] = {n: [] for n in names}
    faults: dict[str, list[int]] = {n: [] for n in names}
    last: dict[str, Any] = {}
    orders = []
    for r in range(rounds):
        order = rotated(names, r)
        orders.append(order)
        for name in order:
            call = by_name[name].timed()
            last[name] = call.result
            seconds[name].append(call.wall)
            cpu_seconds[name].append(call.cpu)
            faults[name].append(call.minor_faults)
        if progress is not None:
            progress(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {seconds[n][-1]:.4f}s" for n in names))
    return Timings(names, seconds, warmup_results, last, orders, cpu_seconds, faults)


def unique_bytes(tensors: Iterable[Any]) -> tuple[int, int]:
    """Bytes held by ``tensors``: (sum of ``nbytes`` over tensors with distinct ``data_ptr``, sum of
    the sizes of their distinct underlying storages). A view (e.g. one CFG half of a batched output)
    counts its own elements in the first figure and keeps its whole storage alive in the second."""
    views: dict[tuple[int, int, tuple], int] = {}
    storages: dict[int, int] = {}
    for t in tensors:
        views.setdefault((t.data_ptr(), t.dtype.itemsize, tuple(t.shape)), t.nbytes)
        storage = t.untyped_storage()
        storages.setdefault(storage.data_ptr(), storage.nbytes())
    by_ptr: dict[int, int] = {}
    for (ptr, _, _), size in views.items():  # one figure per data_ptr: the largest view starting there
        by_ptr[ptr] = max(by_ptr.get(ptr, 0), size)
    return sum(by_ptr.values()), sum(storages.values())


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """Platform, Python/torch versions, CPU count, torch's intra-op thread count and the load average
    at the start (other processes on a shared machine add noise to every ratio)."""
    import torch

    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads() if threads is None else threads,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    import diffusers

    info["diffusers"] = diffusers.__version__
    return info


def machine_line(info: Mapping[str, Any]) -> str:
    """One line describing the machine, for tables and docs."""
    return (f"{info['platform']}, {info['cpu_count']} CPUs, torch {info['torch']}"
            + (f", diffusers {info['diffusers']}" if "diffusers" in info else "")
            + f", Python {info['python']}, {info['torch_threads']} torch thread(s)"
            + (f", load average {info['load_average_1min']}" if "load_average_1min" in info else ""))


def write_result(name: str, payload: Mapping[str, Any], directory: Path | str | None = None) -> Path:
    """Write ``payload`` as ``<directory>/<name>.json`` (default benchmarks/results/) and return the path."""
    out_dir = Path(directory) if directory is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table; ``columns`` are (header, row key, format spec such as ".4f" or "")."""
    header = "| " + " | ".join(h for h, _, _ in columns) + " |"
    rule = "|" + "|".join("---" if not fmt else "---:" for _, _, fmt in columns) + "|"
    lines = [header, rule]
    for row in rows:
        cells = [format(row[key], fmt) if row.get(key) is not None else "" for _, key, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


RATIO_COLUMNS = (
    ("variant", "variant", ""),
    ("median s", "median_s", ".4f"),
    ("median ratio", "median_ratio", ".3f"),
    ("min ratio", "min_ratio", ".3f"),
    ("max ratio", "max_ratio", ".3f"),
)
