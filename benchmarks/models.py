"""The fastercache preset on every model family's tiny pipeline, beside diffusers' and cache-dit's caches.

For each family (a pipeline from ``tests/pipelines.py`` at about 500-800 video tokens, random
weights, CFG), one interleaved timing run of: the uncached pipeline; cachekit's ``fastercache``
preset; diffusers' FasterCache, PyramidAttentionBroadcast and FirstBlockCache
(``transformer.enable_cache``); cache-dit's DBCache (``cache_dit.enable_cache``, when cache-dit is
importable). cache-dit replaces the pipeline class's ``__call__`` (every pipeline of that class in
the process then runs through it), so DBCache is timed in a process of its own, against an
uncached pipeline of that process. A variant that raises when enabled or on its first call is
reported with its error and not timed. Random weights: rel. L2 shows how far a cache moves the output, not the quality a trained
model would keep (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cachekit  # noqa: E402
from benchmarks.common import RESULTS_DIR, Variant, machine_info, machine_line, time_interleaved  # noqa: E402
from tests.pipelines import BUILDERS, model_call, tiny_cogvideox15_pipeline  # noqa: E402

#: Pixel sizes of the benchmark calls: 512-768 video tokens per sample after each family's VAE
#: factors and patching.
PIXELS = {"allegro": (9, 256, 256), "mochi": (13, 256, 256), "ltx": (17, 512, 512), "hunyuan_video": (9, 256, 256),
          "hunyuan_video15": (9, 256, 256), "cogvideox15": (13, 256, 256), "wan22": (9, 256, 256),
          "skyreels_v2": (9, 256, 256), "wan_vace": (9, 256, 256), "chronoedit": (5, 256, 256),
          "sana_video": (9, 256, 256), "kandinsky5": (9, 256, 256), "easyanimate": (9, 256, 256),
          "motif_video": (9, 256, 256), "cosmos": (9, 256, 256)}
BUILD = {**BUILDERS, "cogvideox15": lambda: tiny_cogvideox15_pipeline(sample=32)}  # its size is the model's
LAYOUT = {"cogvideox15": "BFCHW"}  # diffusers FasterCache's tensor_format (BCFHW elsewhere)
BASELINE = "uncached"
CACHEKIT = "cachekit fastercache"
CACHE_DIT = "cache-dit DBCache"


def diffusers_config(name: str, family: str, pipe: Any) -> Any:
    from diffusers import FasterCacheConfig, FirstBlockCacheConfig, PyramidAttentionBroadcastConfig

    now = lambda: pipe.current_timestep  # noqa: E731
    if name == "diffusers FasterCache":
        return FasterCacheConfig(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 681),
                                 unconditional_batch_skip_range=5, unconditional_batch_timestep_skip_range=(-1, 781),
                                 attention_weight_callback=lambda _: 0.5, current_timestep_callback=now,
                                 tensor_format=LAYOUT.get(family, "BCFHW"))
    if name == "diffusers PAB":
        return PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                               spatial_attention_timestep_skip_range=(100, 800),
                                               current_timestep_callback=now)
    return FirstBlockCacheConfig(threshold=0.05)


CONFIGS = {
    CACHEKIT: 'cachekit.enable(pipe, "fastercache")',
    "diffusers FasterCache": "FasterCacheConfig(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 681), "
                             "unconditional_batch_skip_range=5, unconditional_batch_timestep_skip_range=(-1, 781), "
                             "attention_weight_callback=lambda _: 0.5, tensor_format=<the model's>, current_timestep_callback=lambda: pipe.current_timestep)",
    "diffusers PAB": "PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(100, 800), "
                     "current_timestep_callback=lambda: pipe.current_timestep)",
    "diffusers FirstBlockCache": "FirstBlockCacheConfig(threshold=0.05)",
    CACHE_DIT: "cache_dit.enable_cache(pipe, cache_config=DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, "
                         "residual_diff_threshold=0.08, max_warmup_steps=<steps // 4>))",
}


def enable(name: str, family: str, pipe: Any, steps: int) -> Any:
    """Enable variant ``name`` on ``pipe``; return cachekit's session (None for the others)."""
    if name == CACHEKIT:
        return cachekit.enable(pipe, "fastercache", profile=True)
    if name.startswith("diffusers"):
        pipe.transformer.enable_cache(diffusers_config(name, family, pipe))
    elif name == CACHE_DIT:
        import cache_dit

        cache_dit.enable_cache(pipe, cache_config=cache_dit.DBCacheConfig(
            Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.08, max_warmup_steps=steps // 4))
    return None


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def error_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"


class TransformerClock:
    """Wall seconds spent inside the transformer calls (both experts where there are two) of a
    pipeline: what cachekit's prediction describes, without the pipeline's own fixed work (VAE
    encoding of conditioning inputs, text and image encoders)."""

    def __init__(self, pipe: Any) -> None:
        self.seconds, self._start = 0.0, 0.0
        models = [m for m in (pipe.transformer, getattr(pipe, "transformer_2", None)) if m is not None]
        for model in models:
            model.register_forward_pre_hook(self._enter)
            model.register_forward_hook(self._leave)

    def _enter(self, module: Any, args: tuple) -> None:
        self._start = time.perf_counter()

    def _leave(self, module: Any, args: tuple, output: Any) -> None:
        self.seconds += time.perf_counter() - self._start

    def timed(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        self.seconds = 0.0
        result = fn()
        return result, self.seconds


def bench_family(family: str, names: list[str], steps: int, rounds: int, progress: Callable | None) -> dict[str, Any]:
    call: Callable[[Any], Any] = lambda pipe: pipe(**model_call(family, pipe, steps, pixels=PIXELS[family])).frames  # noqa: E731
    pipes, sessions, errors, warm, clocks = {}, {}, {}, {}, {}
    for name in names:
        pipe = BUILD[family]()
        try:
            sessions[name] = enable(name, family, pipe, steps)
            warm[name] = call(pipe)  # warm-up (cachekit: plan and profile)
            pipes[name] = pipe
        except Exception as err:  # reported, not timed
            errors[name] = error_line(err)
    timed = [n for n in names if n in pipes]
    for name in (BASELINE, CACHEKIT):
        if name in pipes:
            clocks[name] = TransformerClock(pipes[name])
    inside: dict[str, list[float]] = {name: [] for name in clocks}

    def variant(name: str) -> Variant:
        pipe = pipes[name]
        if name not in clocks:
            return Variant(name, lambda: call(pipe))

        def run() -> Any:
            result, seconds = clocks[name].timed(lambda: call(pipe))
            inside[name].append(seconds)
            return result

        return Variant(name, run)

    timings = time_interleaved([variant(n) for n in timed], rounds=rounds, warmup=0, progress=progress)
    ref = timings.last_results[BASELINE]
    rows = {}
    for name in names:
        if name in errors:
            rows[name] = {"error": errors[name]}
            continue
        speedups = timings.speedups(name, BASELINE)
        row = {"measured_speedup": statistics.median(speedups), "min_speedup": min(speedups), "max_speedup": max(speedups),
               "median_s": timings.median(name), "rel_l2": rel_l2(timings.last_results[name], ref),
               "finite": bool(torch.isfinite(timings.last_results[name]).all())}
        if sessions.get(name) is not None:
            report = sessions[name].report()
            transformer = statistics.median(b / c for b, c in zip(inside[BASELINE], inside[name]))
            row.update(predicted_speedup=report.predicted_speedup, transformer_speedup=transformer,
                       efficiency=transformer / report.predicted_speedup)
        rows[name] = row
    pipe = pipes[BASELINE]
    return {"family": family, "adapter": cachekit.find_adapter(pipe.transformer, pipe).name, "pixels": PIXELS[family],
            "latent_shape": list(warm[BASELINE].shape), "variants": rows}


def fmt(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"error: `{row['error']}`"
    text = f"{row['measured_speedup']:.2f}x, rel L2 {row['rel_l2']:.3f}"
    if not row["finite"]:
        text += " (non-finite)"
    return text


def table(results: list[dict[str, Any]], names: list[str]) -> str:
    others = [n for n in names if n not in (BASELINE, CACHEKIT)]
    lines = ["| model (adapter) | fastercache predicted | measured (transformer calls) | efficiency | measured (whole call) "
             "| rel L2 | " + " | ".join(others) + " |",
             "|---|---:|---:|---:|---:|---:|" + "---|" * len(others)]
    for result in results:
        ck = result["variants"][CACHEKIT]
        if "error" in ck:
            head = f"error: `{ck['error']}` | | | | "
        else:
            head = (f"{ck['predicted_speedup']:.2f}x | {ck['transformer_speedup']:.2f}x | {ck['efficiency']:.2f} | "
                    f"{ck['measured_speedup']:.2f}x | {ck['rel_l2']:.3f}")
        lines.append(f"| {result['family']} ({result['adapter']}) | {head} | "
                     + " | ".join(fmt(result["variants"][n]) for n in others) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=list(BUILD), choices=list(BUILD), help="default: all")
    parser.add_argument("--steps", type=int, default=30, help="inference steps per call (default 30)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per family (default 5)")
    parser.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    parser.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    parser.add_argument("--cache-dit-only", action="store_true", help=argparse.SUPPRESS)  # the DBCache subprocess
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    if args.cache_dit_only:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):  # cache-dit logs to stdout
            warnings.simplefilter("ignore")
            result = bench_family(args.families[0], [BASELINE, CACHE_DIT], args.steps, args.rounds, progress)
        print(json.dumps(result["variants"][CACHE_DIT]))
        return 0
    names = [BASELINE, CACHEKIT, "diffusers FasterCache", "diffusers PAB", "diffusers FirstBlockCache"]
    try:
        import cache_dit

        cache_dit_note = f"cache-dit {cache_dit.__version__}"
    except Exception as err:  # not installed, or its import fails against this diffusers
        cache_dit, cache_dit_note = None, f"cache-dit not available ({error_line(err)})"
    started = time.perf_counter()
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for family in args.families:
            if progress:
                progress(f"== {family}")
            result = bench_family(family, names, args.steps, args.rounds, progress)
            if cache_dit is not None:
                command = [sys.executable, __file__, "--cache-dit-only", "--families", family, "--steps", str(args.steps),
                           "--rounds", str(args.rounds), "--quiet"]
                done = subprocess.run(command, capture_output=True, text=True)
                result["variants"][CACHE_DIT] = (json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0
                                                 else {"error": done.stderr.strip().splitlines()[-1][:200]})
            results.append(result)
    columns = names + ([CACHE_DIT] if cache_dit is not None else [])
    out = Path(args.out) if args.out else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine_info(), "steps": args.steps, "rounds": args.rounds, "variants": CONFIGS,
              "cache_dit": cache_dit_note, "seconds": time.perf_counter() - started, "results": results}
    (out / "models.json").write_text(json.dumps(record, indent=2))
    print(table(results, columns))
    print(f"\n{args.steps} steps, {args.rounds} rounds; {cache_dit_note}; {machine_line(record['machine'])}; "
          f"{record['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
