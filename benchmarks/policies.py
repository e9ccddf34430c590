"""Policies on the tiny Latte pipeline: cachekit's policies and diffusers' own caches, timed together.

Every variant has its own pipeline, built from the same seed (so the same random weights), with its
cache enabled once before timing. One interleaved run (order rotated by one per round) times
pipeline calls only (wall and process CPU time, and minor page faults). Then, untimed, each variant
is called once more under torch's FLOP counter, with counters on the attention modules and a walk
of the cache state after every denoiser call. cachekit's prediction comes from its own cost model
(timed calls of the sites, with every CFG branch and with one). Run from the repository root:

    .venv/bin/python benchmarks/policies.py [--steps 30] [--rounds 7]

Writes benchmarks/results/policies.json and prints markdown tables. Target: measured/predicted
speedup >= 0.9 for every static cachekit plan. ``--pin-malloc`` pins glibc's mmap/trim thresholds
first, which removes the page faults of tensor allocations from the timings; ``--profile VARIANT``
prints a cProfile of a few calls of that variant at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import pstats
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cachekit  # noqa: E402
from cachekit.cost import flop_counter  # noqa: E402
from cachekit.demo import demo_call, tiny_latte_pipeline  # noqa: E402
from common import Variant, machine_info, machine_line, markdown_table, time_interleaved, unique_bytes, write_result  # noqa: E402

BASELINE = "uncached"
TARGET = 0.9
SEED = 0

#: The diffusers FasterCache setting below, as a cachekit config (equal to it bitwise on this pipeline).
FASTERCACHE_COMPAT = {"policy": [
    {"type": "fastercache", "compat": "diffusers", "sites": {"kinds": ["attn.spatial"]},
     "window": {"start": -1, "end": 681, "unit": "timestep"}, "interval": 2, "schedule": "constant", "weight": 0.5,
     "cfg_interval": 5, "cfg_window": {"start": -1, "end": 641, "unit": "timestep"}},
    {"type": "cfg_cache", "compat": "diffusers", "window": {"start": -1, "end": 641, "unit": "timestep"}, "interval": 5,
     "weighting": "compounding", "alpha_low": 1.1, "alpha_high": 1.1},
]}
#: The diffusers PAB setting below, as a cachekit config. diffusers' spatial identifiers
#: ("transformer_blocks", searched anywhere in the name) also match Latte's temporal attention.
PAB_COMPAT = {"policy": [
    {"type": "pab", "compat": "diffusers", "window": {"start": 100, "end": 800, "unit": "timestep"},
     "spatial": 2, "temporal": 2, "cross": 1, "sites": {"kinds": ["attn.spatial", "attn.temporal"]}},
]}

CACHEKIT: dict[str, Any] = {
    "cachekit reuse": {"policy": [{"type": "reuse"}]},
    "cachekit pab": {"policy": [{"type": "pab"}]},
    "cachekit step_reuse": {"policy": [{"type": "step_reuse"}]},
    "cachekit fastercache": {"policy": [{"type": "fastercache"}]},
    "cachekit cfg_cache": {"policy": [{"type": "cfg_cache"}]},
    "cachekit preset fastercache": "fastercache",
    "cachekit fastercache compat": FASTERCACHE_COMPAT,
    "cachekit pab compat": PAB_COMPAT,
}


def diffusers_fastercache(pipe: Any) -> Any:
    from diffusers import FasterCacheConfig

    return FasterCacheConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 681),
        unconditional_batch_skip_range=5, unconditional_batch_timestep_skip_range=(-1, 641),
        attention_weight_callback=lambda _: 0.5, tensor_format="BCFHW",
        current_timestep_callback=lambda: pipe.current_timestep,
    )


def diffusers_pab(pipe: Any) -> Any:
    from diffusers import PyramidAttentionBroadcastConfig

    return PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(100, 800),
        current_timestep_callback=lambda: pipe.current_timestep,
    )


DIFFUSERS: dict[str, Callable[[Any], Any]] = {
    "diffusers FasterCache": diffusers_fastercache,
    "diffusers PAB": diffusers_pab,
}
DIFFUSERS_SOURCE = {
    "diffusers FasterCache": "FasterCacheConfig(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 681), "
                             "unconditional_batch_skip_range=5, unconditional_batch_timestep_skip_range=(-1, 641), "
                             "attention_weight_callback=lambda _: 0.5, tensor_format='BCFHW', current_timestep_callback=lambda: pipe.current_timestep)",
    "diffusers PAB": "PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(100, 800), "
                     "current_timestep_callback=lambda: pipe.current_timestep)",
}
#: cachekit compat variant -> the diffusers variant it reproduces.
PAIRS = {"cachekit fastercache compat": "diffusers FasterCache", "cachekit pab compat": "diffusers PAB"}

ATTENTION_KINDS = ("spatial", "temporal", "cross")


def attention_modules(transformer: torch.nn.Module) -> dict[str, tuple[str, torch.nn.Module]]:
    """Latte's attention modules by name, with their kind: spatial self (``transformer_blocks.i.attn1``),
    cross (``transformer_blocks.i.attn2``) and temporal self (``temporal_transformer_blocks.i.attn1``)."""
    found = {}
    for name, module in transformer.named_modules():
        if name.startswith("transformer_blocks.") and name.endswith(".attn1"):
            found[name] = ("spatial", module)
        elif name.startswith("transformer_blocks.") and name.endswith(".attn2"):
            found[name] = ("cross", module)
        elif name.startswith("temporal_transformer_blocks.") and name.endswith(".attn1"):
            found[name] = ("temporal", module)
    return found


def _tensors(value: Any, depth: int = 0) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if depth < 4 and isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v, depth + 1)]
    if depth < 4 and isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v, depth + 1)]
    return []


def diffusers_cache_tensors(transformer: torch.nn.Module) -> list[torch.Tensor]:
    """Every tensor held in the state of a diffusers hook on ``transformer`` or its submodules (FasterCache's
    denoiser low/high-frequency deltas and block ``cache`` lists, PAB's ``cache``)."""
    tensors = []
    for module in transformer.modules():
        registry = module.__dict__.get("_diffusers_hook")
        if registry is None:
            continue
        for hook in registry.hooks.values():
            state = getattr(hook, "state", None)
            if state is not None:
                tensors += _tensors(list(vars(state).values()))
    return tensors


def cachekit_cache_tensors(session: Any) -> list[torch.Tensor]:
    """Every tensor in the store of cachekit's current run."""
    run = session.runtime.run
    return [] if run is None else _tensors(list(run.stored()))


def measure_call(pipe: Any, steps: int, session: Any = None) -> dict[str, Any]:
    """One untimed call: total FLOPs, attention rows computed per kind, and peak cache bytes (walked
    after every denoiser call)."""
    rows = dict.fromkeys(ATTENTION_KINDS, 0)
    calls = dict.fromkeys(ATTENTION_KINDS, 0)
    peak = {"tensor": 0, "storage": 0}
    handles = []

    def count(kind: str) -> Callable:
        def hook(module: torch.nn.Module, args: tuple) -> None:
            rows[kind] += args[0].shape[0]  # batch x (frames or tokens) rows through the projection
            calls[kind] += 1
        return hook

    def walk(module: torch.nn.Module, args: tuple, output: Any) -> None:
        tensors = cachekit_cache_tensors(session) if session is not None else diffusers_cache_tensors(pipe.transformer)
        tensor_bytes, storage_bytes = unique_bytes(tensors)
        peak["tensor"] = max(peak["tensor"], tensor_bytes)
        peak["storage"] = max(peak["storage"], storage_bytes)

    # ``to_q`` runs only when its attention module computes, whatever cache wraps the module.
    for kind, module in attention_modules(pipe.transformer).values():
        handles.append(module.to_q.register_forward_pre_hook(count(kind)))
    handles.append(pipe.transformer.register_forward_hook(walk))
    try:
        with flop_counter() as counter:
            frames = pipe(**demo_call(pipe, steps=steps)).frames
    finally:
        for handle in handles:
            handle.remove()
    return {"flops": counter.get_total_flops(), "attention_rows": rows, "attention_calls": calls,
            "peak_tensor_bytes": peak["tensor"], "peak_storage_bytes": peak["storage"], "frames": frames}


def quality(x: torch.Tensor, ref: torch.Tensor) -> dict[str, float | None]:
    """Relative L2 ``||x - ref|| / ||ref||`` and PSNR ``20 log10((max(ref) - min(ref)) / rmse)`` (None when equal)."""
    x, ref = x.double(), ref.double()
    diff = x - ref
    rmse = diff.pow(2).mean().sqrt().item()
    rel = (diff.norm() / ref.norm()).item()
    peak_to_peak = (ref.max() - ref.min()).item()
    return {"rel_l2": rel, "psnr_db": None if rmse == 0 else 20 * math.log10(peak_to_peak / rmse)}


def profile_variant(name: str, pipe: Any, steps: int, calls: int = 3, top: int = 25) -> str:
    """cProfile ``calls`` calls of one variant's pipeline; the top functions by internal time."""
    profiler = cProfile.Profile()
    for _ in range(calls):
        kwargs = demo_call(pipe, steps=steps)
        profiler.enable()
        pipe(**kwargs)
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return f"## cProfile: {name} ({calls} calls)\n\n" + out.getvalue()


#: glibc mallopt parameters: M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD.
_MALLOPT = {"M_TRIM_THRESHOLD": (-1, 1 << 30), "M_TOP_PAD": (-2, 256 << 20), "M_MMAP_THRESHOLD": (-3, 256 << 20)}


def pin_malloc() -> dict[str, int]:
    """Keep freed memory in glibc's heap (no mmap for blocks under 256 MiB, no trimming), so tensor
    allocations stop page-faulting. Equivalent to the MALLOC_*_ environment variables set at start-up."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    for name, (param, value) in _MALLOPT.items():
        if libc.mallopt(param, value) != 1:
            raise RuntimeError(f"mallopt({name}, {value}) failed")
    return {name: value for name, (_, value) in _MALLOPT.items()}


def source_revision() -> str | None:
    """The repository's HEAD commit, with "+dirty" when tracked files differ from it (None without git)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def _fmt_bytes(n: int | None) -> str | None:
    return None if n is None else f"{n / 1024:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="inference steps per call (default 30)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls per variant (default 1)")
    parser.add_argument("--frames", type=int, default=8, help="latent frames of the demo pipeline (default 8)")
    parser.add_argument("--sample-size", type=int, default=16, help="latent height/width (default 16)")
    parser.add_argument("--layers", type=int, default=2, help="transformer layers (default 2)")
    parser.add_argument("--only", nargs="*", default=None, help="time only these variants (and uncached)")
    parser.add_argument("--profile", nargs="*", default=(), metavar="VARIANT",
                        help="after the run, cProfile these variants (3 calls each) and print the top functions")
    parser.add_argument("--pin-malloc", action="store_true",
                        help="pin glibc's mmap and trim thresholds first (no page faults from tensor allocations; glibc only)")
    parser.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    parser.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    malloc = pin_malloc() if args.pin_malloc else None

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # FasterCache's "experimental feature" warning
    shape = dict(frames=args.frames, sample_size=args.sample_size, layers=args.layers)
    names = [BASELINE, *CACHEKIT, *DIFFUSERS]
    if args.only is not None:
        unknown = set(args.only) - set(names)
        if unknown:
            parser.error(f"unknown variants {sorted(unknown)}; known: {names}")
        names = [n for n in names if n == BASELINE or n in args.only]
    missing = [n for n in args.profile if n not in names]
    if missing:
        parser.error(f"cannot profile {missing}: not among the variants run ({names})")

    pipes: dict[str, Any] = {}
    sessions: dict[str, Any] = {}
    for name in names:
        pipes[name] = pipe = tiny_latte_pipeline(seed=SEED, **shape)
        if name in CACHEKIT:
            sessions[name] = cachekit.enable(pipe, CACHEKIT[name], profile=True)
        elif name in DIFFUSERS:
            pipe.transformer.enable_cache(DIFFUSERS[name](pipe))

    def variant(name: str) -> Variant:
        pipe = pipes[name]
        return Variant(name, lambda kwargs: pipe(**kwargs).frames, setup=lambda: demo_call(pipe, steps=args.steps))

    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        timings = time_interleaved([variant(n) for n in names], rounds=args.rounds, warmup=args.warmup, progress=progress)
        measured = {}
        for name in names:
            measured[name] = measure_call(pipes[name], args.steps, sessions.get(name))
    timed_at = time.perf_counter()
    run_warnings = sorted({str(w.message) for w in caught})

    ref = timings.last_results[BASELINE]
    base = measured[BASELINE]
    base_self_rows = base["attention_rows"]["spatial"] + base["attention_rows"]["temporal"]
    rows = []
    for name in names:
        m = measured[name]
        out = timings.last_results[name]
        speedups = timings.speedups(name, BASELINE)
        cpu_speedups = timings.speedups(name, BASELINE, cpu=True)
        row: dict[str, Any] = {
            "variant": name,
            "source": "uncached" if name == BASELINE else ("cachekit" if name in CACHEKIT else "diffusers"),
            "median_s": timings.median(name),
            "seconds": list(timings.seconds[name]),
            "speedups": speedups,
            "measured_speedup": statistics.median(speedups),
            "min_speedup": min(speedups),
            "max_speedup": max(speedups),
            "cpu_seconds": list(timings.cpu_seconds[name]),
            "cpu_speedups": cpu_speedups,
            "measured_speedup_cpu": statistics.median(cpu_speedups),
            "minor_faults": list(timings.minor_faults[name]),
            "median_minor_faults": statistics.median(timings.minor_faults[name]),
            "flops": m["flops"],
            "measured_flop_fraction": m["flops"] / base["flops"],
            "attention_rows": m["attention_rows"],
            "attention_calls": m["attention_calls"],
            "attention_fraction": {k: m["attention_rows"][k] / base["attention_rows"][k] for k in ATTENTION_KINDS},
            "self_attention_fraction": (m["attention_rows"]["spatial"] + m["attention_rows"]["temporal"]) / base_self_rows,
            "walked_peak_cache_bytes": m["peak_tensor_bytes"],
            "walked_peak_cache_storage_bytes": m["peak_storage_bytes"],
            "deterministic": bool(torch.equal(m["frames"], out) and torch.equal(timings.warmup_results[name], out)),
            **quality(out, ref),
        }
        if name in CACHEKIT:
            session = sessions[name]
            report = session.report()
            plan = session.plan
            executed = report.counts()
            nodes = plan.num_steps * len(plan.branches) * len(plan.sites)
            row.update({
                "config": CACHEKIT[name],
                "policies": list(report.policies),
                "static_plan": plan.is_static,
                "hooked_sites": [s.name for s in session.planned_sites],
                "planned": {k: v for k, v in report.planned.items() if v},
                "executed": executed,
                "node_compute_fraction": executed.get("compute", 0) / nodes,
                "predicted_speedup": report.predicted_speedup,
                "prediction_basis": report.prediction_basis,
                "predicted_peak_cache_bytes": report.predicted_peak_cache_bytes,
                "measured_peak_cache_bytes": report.measured_peak_cache_bytes,
                "warnings": list(report.warnings),
            })
            row["measured_over_predicted"] = row["measured_speedup"] / row["predicted_speedup"]
            row["measured_over_predicted_cpu"] = row["measured_speedup_cpu"] / row["predicted_speedup"]
        elif name in DIFFUSERS:
            row["config"] = DIFFUSERS_SOURCE[name]
        rows.append(row)

    by_name = {r["variant"]: r for r in rows}
    pairs = []
    for ours, theirs in PAIRS.items():
        if ours in by_name and theirs in by_name:
            a, b = by_name[ours], by_name[theirs]
            pairs.append({
                "cachekit": ours, "diffusers": theirs,
                "bitwise_equal_latents": bool(torch.equal(timings.last_results[ours], timings.last_results[theirs])),
                "cachekit_peak_cache_bytes": a["measured_peak_cache_bytes"],
                "cachekit_walked_peak_cache_bytes": a["walked_peak_cache_bytes"],
                "cachekit_walked_peak_cache_storage_bytes": a["walked_peak_cache_storage_bytes"],
                "diffusers_walked_peak_cache_bytes": b["walked_peak_cache_bytes"],
                "diffusers_walked_peak_cache_storage_bytes": b["walked_peak_cache_storage_bytes"],
                "cachekit_below_diffusers": a["walked_peak_cache_bytes"] < b["walked_peak_cache_bytes"],
                "cachekit_below_diffusers_storage": a["walked_peak_cache_storage_bytes"] < b["walked_peak_cache_storage_bytes"],
                "measured_speedup_cachekit": a["measured_speedup"], "measured_speedup_diffusers": b["measured_speedup"],
            })

    info = machine_info()
    payload = {
        "benchmark": "policies",
        "machine": info,
        "revision": source_revision(),
        "parameters": {
            "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup, "seed": SEED,
            "pipeline": f"cachekit.demo.tiny_latte_pipeline(frames={args.frames}, sample_size={args.sample_size}, "
                        f"layers={args.layers}) (LattePipeline, 4 heads x 16 dims, random weights)",
            "call": "demo_call(pipe, steps) (DDIM, guidance 7.5 so CFG batched [uncond, cond], output_type latent)",
            "baseline": BASELINE, "target_measured_over_predicted": TARGET,
            "malloc": "glibc defaults" if malloc is None else {"mallopt": malloc},
            "timing": "one interleaved run: warm-up, then rounds in an order rotated by one per round; "
                      "median over rounds; measured speedup = median over rounds of uncached/variant in the same round",
            "measured_flop_fraction": "FLOPs of one call under torch's FLOP counter (cachekit.cost.flop_counter: matmuls, "
                                      "SDPA; elementwise ops and FFTs count 0) / the uncached call's",
            "node_compute_fraction": "cachekit: executed compute nodes / all (step, site, branch) nodes of the plan, denoiser "
                                     "included; nodes not called (enclosing site not computed) count as not computed",
            "attention_fraction": "rows through each attention module's to_q projection (it runs only when the module computes) "
                                  "/ the uncached call's rows, per kind; self = spatial + temporal",
            "walked_peak_cache_bytes": "max over the denoiser calls of one run of the bytes of the distinct tensors (by data_ptr) "
                                       "held in the cache state right after the call: cachekit's run store; diffusers' hook states",
            "walked_peak_cache_storage_bytes": "the same, counting each distinct underlying storage whole (a CFG half kept as a "
                                               "view of the batched output keeps the whole output alive)",
            "measured_speedup_cpu": "the same from process CPU time (time.process_time) around each timed call: less "
                                    "sensitive to other processes on a shared machine",
            "minor_faults": "minor page faults of the process during each timed call (resource.getrusage): glibc serves "
                            "large tensors with fresh mmaps, whose first touch faults; a diagnostic of allocation effects on time",
            "quality": "vs the uncached final latents: rel_l2 = ||x - ref||_2 / ||ref||_2; psnr_db = 20 log10((max(ref) - "
                       "min(ref)) / rmse(x - ref)); the weights are random, so these only compare variants with each other",
        },
        "variants": rows,
        "compat_pairs": pairs,
        "warnings": run_warnings,
        "wall_seconds": timed_at - started,
    }
    path = write_result("policies", payload, args.out)

    def pct(x: float | None) -> str | None:
        return None if x is None else f"{100 * x:.1f}%"

    table = []
    for r in rows:
        table.append({
            "variant": r["variant"],
            "flop": pct(r["measured_flop_fraction"]),
            "nodes": pct(r.get("node_compute_fraction")),
            "self": pct(r["self_attention_fraction"]),
            "pred": r.get("predicted_speedup"),
            "meas": r["measured_speedup"],
            "ratio": r.get("measured_over_predicted"),
            "meas_cpu": r["measured_speedup_cpu"],
            "ratio_cpu": r.get("measured_over_predicted_cpu"),
            "median_s": r["median_s"],
            "peak": _fmt_bytes(r.get("measured_peak_cache_bytes")),
            "pred_peak": _fmt_bytes(r.get("predicted_peak_cache_bytes")),
            "walked": _fmt_bytes(r["walked_peak_cache_bytes"]),
            "storage": _fmt_bytes(r["walked_peak_cache_storage_bytes"]),
            "faults": f"{r['median_minor_faults']:.0f}",
            "rel_l2": r["rel_l2"] if r["variant"] != BASELINE else None,
            "psnr": f"{r['psnr_db']:.1f}" if r["psnr_db"] is not None else None,
        })
    speed_columns = (
        ("variant", "variant", ""), ("FLOPs run", "flop", ""), ("nodes computed", "nodes", ""), ("self-attn computed", "self", ""), ("median s", "median_s", ".4f"),
        ("predicted speedup", "pred", ".3f"), ("measured speedup", "meas", ".3f"), ("measured/predicted", "ratio", ".3f"),
        ("measured speedup (CPU time)", "meas_cpu", ".3f"), ("measured/predicted (CPU time)", "ratio_cpu", ".3f"),
    )
    memory_columns = (
        ("variant", "variant", ""), ("peak cache KiB (report)", "peak", ""), ("predicted KiB", "pred_peak", ""),
        ("walked KiB", "walked", ""), ("walked storage KiB", "storage", ""), ("rel L2", "rel_l2", ".4f"), ("PSNR dB", "psnr", ""),
        ("minor page faults/call", "faults", ""),
    )
    print(f"## Policies on the tiny Latte pipeline ({args.rounds} rounds, {args.steps} steps, "
          f"frames={args.frames}, sample_size={args.sample_size}, layers={args.layers})\n")
    print(markdown_table(table, speed_columns))
    print()
    print(markdown_table(table, memory_columns))
    print(f"\nmachine: {machine_line(info)}")
    for p in pairs:
        print(f"{p['cachekit']} vs {p['diffusers']}: latents bitwise equal: {p['bitwise_equal_latents']}; peak cache "
              f"{p['cachekit_walked_peak_cache_bytes'] / 1024:.1f} KiB vs {p['diffusers_walked_peak_cache_bytes'] / 1024:.1f} KiB "
              f"(storage {p['cachekit_walked_peak_cache_storage_bytes'] / 1024:.1f} vs "
              f"{p['diffusers_walked_peak_cache_storage_bytes'] / 1024:.1f} KiB)")
    missed = [r for r in rows if r.get("static_plan") and r["measured_over_predicted"] < TARGET]
    for r in missed:
        print(f"BELOW TARGET: {r['variant']}: measured/predicted {r['measured_over_predicted']:.3f} < {TARGET}")
    if not missed:
        print(f"every static cachekit plan: measured/predicted >= {TARGET}")
    nondet = [r["variant"] for r in rows if not r["deterministic"]]
    if nondet:
        print(f"NOT DETERMINISTIC across calls: {nondet}")
    for message in run_warnings:
        print(f"warning: {message}")
    print(f"wall time {timed_at - started:.0f} s; wrote {path}")

    for name in args.profile:
        print()
        print(profile_variant(name, pipes[name], args.steps))

    for name in sessions:
        cachekit.disable(pipes[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
