"""cachekit's fastercache preset and run-time policies on every model family's tiny pipeline, beside diffusers' and cache-dit's caches.

For each family (a pipeline from ``tests/pipelines*.py`` at about 200-800 video tokens, random
weights, CFG where the pipeline has it), one
interleaved timing run of: the uncached pipeline; cachekit's ``fastercache`` preset; cachekit's
run-time policies on the block stack (``first_block``, ``teacache``, ``easycache``, ``seacache``,
and ``magcache`` with magnitude ratios calibrated by ``cachekit.calibrate`` on another seed of the
same call); diffusers' FasterCache, PyramidAttentionBroadcast and FirstBlockCache
(``transformer.enable_cache``); cache-dit's DBCache (``cache_dit.enable_cache``, when cache-dit is
importable). cache-dit replaces the pipeline class's ``__call__`` (every pipeline of that class in
the process then runs through it), so DBCache is timed in a process of its own, against an
uncached pipeline of that process. A variant that raises when enabled or on its first call is
reported with its error and not timed. Multi-loop pipelines (HunyuanVideo FramePack's sections,
Helios' chunks and pyramid stages) are timed by whole pipeline calls, as every family is.
``--families`` and ``--only`` select what runs; ``--update`` merges the run into the existing
results file, each figure keeping the run it came from. Random weights: rel. L2 shows how far a
cache moves the output, not the quality a trained model would keep (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import shlex
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
from tests.pipelines_multiloop import (framepack_call, helios_call, helios_pyramid_call,  # noqa: E402
                                       tiny_framepack_pipeline, tiny_helios_pipeline, tiny_helios_pyramid_pipeline)
from tests.pipelines_flex import BUILDERS as FLEX_BUILDERS, CALLS as FLEX_CALLS  # noqa: E402
from tests.pipelines_ltx2 import ltx2_call, tiny_ltx2_pipeline  # noqa: E402
from tests.pipelines_more import BUILDERS as MORE_BUILDERS, CALLS as MORE_CALLS  # noqa: E402
from tests.pipelines_new import BUILDERS as NEW_BUILDERS, CALLS as NEW_CALLS  # noqa: E402
from tests.pipelines_wan_animate2 import tiny_wan_animate2_pipeline, wan_animate2_call  # noqa: E402

#: Pixel sizes of the benchmark calls: 512-768 video tokens per sample after each family's VAE
#: factors and patching.
PIXELS = {"allegro": (9, 256, 256), "mochi": (13, 256, 256), "ltx": (17, 512, 512), "hunyuan_video": (9, 256, 256),
          "hunyuan_video15": (9, 256, 256), "cogvideox15": (13, 256, 256), "wan22": (9, 256, 256),
          "skyreels_v2": (9, 256, 256), "wan_vace": (9, 256, 256), "chronoedit": (5, 256, 256),
          "sana_video": (9, 256, 256), "kandinsky5": (9, 256, 256), "easyanimate": (9, 256, 256),
          "motif_video": (9, 256, 256), "cosmos": (9, 256, 256),
          # ConsisID's tiny VAE does not downsample in space (patch 2: 3 x 16 x 16 tokens)
          "anyflow": (9, 256, 256), "kandinsky6": (9, 256, 256), "consisid": (9, 32, 32),
          # per loop: 2 latent frames of 32x32 (512 tokens) beside the history latents; 2 sections / chunks
          "hunyuan_video_framepack": (9, 256, 256), "helios": (9, 256, 256), "helios_pyramid": (9, 256, 256),
          # the tests' calls: LTX-2 3 latent frames of 16x16 (768 video tokens) and 5 audio frames; Sana-WM
          # 3 of 16x16 from a 32x32 call; Wan Animate 2 segments (loops) of 3 latent frames of 4x4
          "ltx2": (5, 32, 32), "sana_wm": (5, 32, 32), "wan_animate": (9, 32, 32),
          # AnyFlow-FAR 2 chunks (loops) of 1 and 2 latent frames of 32x32 (256 tokens a frame); Kandinsky 6 SR the
          # tests' call: 2 tiles (loops) of 3 latent frames of 8x8 (192 tokens), no CFG
          "anyflow_far": (9, 256, 256), "kandinsky6_sr": (5, 8, 12),
          # Cosmos 3: 3 latent frames of 16x16 (192 vision tokens after 2x2 patches) beside 48-52 prompt tokens
          "cosmos3": (9, 128, 128),
          # Wan Animate 2: the tests' call, one 5-frame segment of 32x32 (3 latent frames of 4x4), decoded
          "wan_animate2": (5, 32, 32)}
BUILD = {**BUILDERS, "cogvideox15": lambda: tiny_cogvideox15_pipeline(sample=32),  # its size is the model's
         "anyflow": NEW_BUILDERS["anyflow"], "kandinsky6": NEW_BUILDERS["kandinsky6"],
         "consisid": NEW_BUILDERS["consisid"], "hunyuan_video_framepack": tiny_framepack_pipeline,
         "helios": tiny_helios_pipeline, "helios_pyramid": tiny_helios_pyramid_pipeline,
         "ltx2": tiny_ltx2_pipeline, "wan_animate2": tiny_wan_animate2_pipeline, **MORE_BUILDERS, **FLEX_BUILDERS}
#: diffusers FasterCache's tensor_format (BCFHW elsewhere)
LAYOUT = {"cogvideox15": "BFCHW", "anyflow": "BFCHW", "anyflow_far": "BFCHW", "consisid": "BFCHW"}
BASELINE = "uncached"
CACHEKIT = "cachekit fastercache"
CACHE_DIT = "cache-dit DBCache"
MAGCACHE = "cachekit magcache"
#: cachekit's run-time policies on the block stack, at the settings of the timed `cachekit bench`
#: rows in docs/benchmarks.md (MagCache's entry gets its calibrated ratios on top, see `enable`).
ADAPTIVE = {
    "cachekit first_block": {"policy": [{"type": "first_block", "threshold": 0.1}]},
    "cachekit teacache": {"policy": [{"type": "teacache", "rel_l1_thresh": 0.1}]},
    "cachekit easycache": {"policy": [{"type": "easycache", "threshold": 0.1, "warmup": 3}]},
    "cachekit seacache": {"policy": [{"type": "seacache", "threshold": 0.5}]},
    MAGCACHE: {"policy": [{"type": "magcache", "threshold": 0.12, "max_skips": 4}]},
}
PEERS = ["diffusers FasterCache", "diffusers PAB", "diffusers FirstBlockCache"]
#: Every variant in the table's order (cache-dit's DBCache runs in a process of its own).
NAMES = [BASELINE, CACHEKIT, *ADAPTIVE, *PEERS, CACHE_DIT]


def call_kwargs(family: str, pipe: Any, steps: int, seed: int = 0) -> dict[str, Any]:
    """Keyword arguments of one seeded CFG call of ``family``'s tiny pipeline at ``PIXELS[family]``,
    returning latents. Helios' pyramid runs 3 stages of ``steps // 3`` steps per chunk."""
    frames, height, width = PIXELS[family]
    size = dict(num_frames=frames, height=height, width=width)
    if family in NEW_CALLS:  # the tests' call, resized (the pipelines resize a conditioning image)
        return {**NEW_CALLS[family](pipe, steps, seed), **size}
    if family == "ltx2":
        return ltx2_call(pipe, steps, seed)
    if family == "wan_animate2":
        return wan_animate2_call(pipe, steps, seed)
    if family == "cosmos3":
        return {**MORE_CALLS[family](pipe, steps, seed), **size}
    if family == "sana_wm":
        return {**MORE_CALLS[family](pipe, steps, seed), "height": height, "width": width}
    if family == "wan_animate":  # the size of its pose and face videos
        return MORE_CALLS[family](pipe, steps, seed)
    if family == "anyflow_far":
        return {**FLEX_CALLS[family](pipe, steps, seed), **size}
    if family == "kandinsky6_sr":  # no CFG; returns pixels (the pipeline has no latent output)
        return FLEX_CALLS[family](pipe, steps, seed)
    if family == "hunyuan_video_framepack":
        return {**framepack_call(pipe, steps, seed), **size}
    if family == "helios":
        return {**helios_call(pipe, steps, seed), **size}
    if family == "helios_pyramid":
        return {**helios_pyramid_call(pipe, max(steps // 3, 1), seed), **size}
    return model_call(family, pipe, steps, seed, pixels=PIXELS[family])


def latents(output: Any) -> torch.Tensor:
    """The call's final latents: its ``frames`` (Cosmos 3: ``video``; a modular pipeline returns the
    output it is asked for, a tensor); FramePack returns a list of the
    history latents after each section, the last of which holds the whole video's."""
    if isinstance(output, torch.Tensor):  # a modular pipeline's requested output
        return output
    frames = output.frames if hasattr(output, "frames") else output.video
    return frames[-1] if isinstance(frames, list) else frames


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
    **{name: f"cachekit.enable(pipe, {json.dumps(config)})" for name, config in ADAPTIVE.items()},
    "diffusers FasterCache": "FasterCacheConfig(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 681), "
                             "unconditional_batch_skip_range=5, unconditional_batch_timestep_skip_range=(-1, 781), "
                             "attention_weight_callback=lambda _: 0.5, tensor_format=<the model's>, current_timestep_callback=lambda: pipe.current_timestep)",
    "diffusers PAB": "PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(100, 800), "
                     "current_timestep_callback=lambda: pipe.current_timestep)",
    "diffusers FirstBlockCache": "FirstBlockCacheConfig(threshold=0.05)",
    CACHE_DIT: "cache_dit.enable_cache(pipe, cache_config=DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, "
                         "residual_diff_threshold=0.08, max_warmup_steps=<steps // 4>))",
}
CONFIGS[MAGCACHE] = (f"cachekit.enable(pipe, {json.dumps(ADAPTIVE[MAGCACHE])}) over the entry of "
                     "cachekit.calibrate(pipe, **<the same call with seed 1>) (its mag_ratios)")


def enable(name: str, family: str, pipe: Any, steps: int) -> Any:
    """Enable variant ``name`` on ``pipe``; return cachekit's session (None for the others).
    MagCache's ratios are calibrated here, on the call with seed 1 (the timed calls use seed 0)."""
    if name == CACHEKIT:
        return cachekit.enable(pipe, "fastercache", profile=True)
    if name == MAGCACHE:
        calibrated = cachekit.calibrate(pipe, **call_kwargs(family, pipe, steps, seed=1)).to_dict()["policy"][0]
        return cachekit.enable(pipe, {"policy": [{**calibrated, **ADAPTIVE[MAGCACHE]["policy"][0]}]}, profile=True)
    if name in ADAPTIVE:
        return cachekit.enable(pipe, ADAPTIVE[name], profile=True)
    if name.startswith("diffusers"):
        pipe.transformer.enable_cache(diffusers_config(name, family, pipe))
    elif name == CACHE_DIT:
        import cache_dit

        cache_dit.enable_cache(pipe, cache_config=cache_dit.DBCacheConfig(
            Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.08, max_warmup_steps=steps // 4))
    return None


def predicted_speedup(session: Any) -> float | None:
    """The cost model's speedup for the session's latest call: over a multi-loop call's loops, their
    predicted uncached seconds over their predicted seconds (one report: its own figure)."""
    reports = session.reports()
    if len(reports) == 1:
        return reports[0].predicted_speedup
    if any(r.predicted_speedup is None or r.predicted_seconds is None for r in reports):
        return None
    return sum(r.predicted_seconds * r.predicted_speedup for r in reports) / sum(r.predicted_seconds for r in reports)


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
    call: Callable[[Any], Any] = lambda pipe: latents(pipe(**call_kwargs(family, pipe, steps)))  # noqa: E731
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
    for name in pipes:
        if name == BASELINE or sessions.get(name) is not None:
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
            predicted = predicted_speedup(sessions[name])
            transformer = statistics.median(b / c for b, c in zip(inside[BASELINE], inside[name]))
            row.update(predicted_speedup=predicted, transformer_speedup=transformer,
                       efficiency=transformer / predicted if predicted else None,
                       compute_fractions=[r.compute_fraction for r in sessions[name].reports()])  # one per loop
        rows[name] = row
    pipe = pipes[BASELINE]
    return {"family": family, "adapter": cachekit.find_adapter(pipe.transformer, pipe).name, "pixels": PIXELS[family],
            "latent_shape": list(warm[BASELINE].shape), "variants": rows}


def fmt(row: dict[str, Any] | None) -> str:
    if row is None:
        return "not run"
    if "error" in row:
        return f"error: `{row['error']}`"
    text = f"{row['measured_speedup']:.2f}x, rel L2 {row['rel_l2']:.3f}"
    if not row["finite"]:
        text += " (non-finite)"
    return text


def ratio(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def fastercache_cells(row: dict[str, Any] | None) -> str:
    if row is None:
        return "not run | | | | "
    if "error" in row:
        return f"error: `{row['error']}` | | | | "
    return (f"{ratio(row.get('predicted_speedup'), '.2f')}x | {row['transformer_speedup']:.2f}x | "
            f"{ratio(row.get('efficiency'), '.2f')} | {row['measured_speedup']:.2f}x | {row['rel_l2']:.3f}")


def table(results: list[dict[str, Any]]) -> str:
    present = {name for result in results for name in result["variants"]}
    others = [n for n in NAMES if n not in (BASELINE, CACHEKIT) and n in present]
    lines = ["| model (adapter) | fastercache predicted | measured (transformer calls) | efficiency | measured (whole call) "
             "| rel L2 | " + " | ".join(others) + " |",
             "|---|---:|---:|---:|---:|---:|" + "---|" * len(others)]
    for result in results:
        lines.append(f"| {result['family']} ({result['adapter']}) | {fastercache_cells(result['variants'].get(CACHEKIT))} | "
                     + " | ".join(fmt(result["variants"].get(n)) for n in others) + " |")
    return "\n".join(lines)


def run_line(index: int, run: dict[str, Any], steps: int) -> str:
    return (f"run {index} (`{run['command']}`): {len(run['families'])} families, {len(run['variants'])} variants; "
            f"{steps} steps, {run['rounds']} rounds; {run['cache_dit']}; {machine_line(run['machine'])}; "
            f"{run['seconds']:.0f} s")


def with_runs(record: dict[str, Any]) -> dict[str, Any]:
    """A results record in the form with ``runs`` (one written before ``--update`` existed is one run)."""
    if "runs" in record:
        return record
    results = record["results"]
    for result in results:
        for row in result["variants"].values():
            row["run"] = 0
        result["baselines"] = {"0": result["variants"][BASELINE]["median_s"]}
    run = {"command": ".venv/bin/python benchmarks/models.py", "machine": record["machine"], "rounds": record["rounds"],
           "cache_dit": record["cache_dit"], "seconds": record["seconds"], "families": [r["family"] for r in results],
           "variants": [n for n in NAMES if any(n in r["variants"] for r in results)]}
    return {"steps": record["steps"], "variants": record["variants"], "runs": [run], "results": results}


def merge(record: dict[str, Any] | None, steps: int, run: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """``record`` (None: a new one) with this run's figures in place of the ones it had for the same
    families and variants; every variant row says which run measured it (an index into ``runs``)."""
    record = {"steps": steps, "variants": {}, "runs": [], "results": []} if record is None else with_runs(record)
    index = len(record["runs"])
    record["runs"].append(run)
    record["variants"] = {**record["variants"], **{n: CONFIGS[n] for n in run["variants"] if n in CONFIGS}}
    by_family = {r["family"]: r for r in record["results"]}
    for result in results:
        for row in result["variants"].values():
            row["run"] = index
        old = by_family.get(result["family"])
        baselines = {**(old or {}).get("baselines", {}), str(index): result["variants"][BASELINE]["median_s"]}
        merged = {**(old or {}), **result, "variants": {**(old or {}).get("variants", {}), **result["variants"]},
                  "baselines": baselines}
        if old is None:
            record["results"].append(merged)
        else:
            record["results"][record["results"].index(old)] = merged
    return without_unused_runs(record)


def without_unused_runs(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without the runs none of its figures comes from any more, the others renumbered."""
    used = sorted({row["run"] for result in record["results"] for row in result["variants"].values()})
    number = {old: new for new, old in enumerate(used)}
    for result in record["results"]:
        for row in result["variants"].values():
            row["run"] = number[row["run"]]
        result["baselines"] = {str(number[int(k)]): v for k, v in result["baselines"].items() if int(k) in number}
    record["runs"] = [record["runs"][old] for old in used]
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=list(BUILD), choices=list(BUILD), help="default: all")
    parser.add_argument("--only", nargs="+", metavar="VARIANT", default=None,
                        help="variants to run, by name or shell pattern ('cachekit *'); the uncached baseline always "
                             f"runs (default: all of {', '.join(NAMES[1:])})")
    parser.add_argument("--update", action="store_true",
                        help="merge into the existing models.json: this run's figures replace those of the same "
                             "families and variants, the others are kept (each row names its run)")
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
    chosen = [n for n in NAMES[1:] if args.only is None or any(fnmatch.fnmatchcase(n, p) for p in args.only)]
    if args.only is not None and not chosen:
        parser.error(f"--only {' '.join(args.only)} matches no variant of {', '.join(NAMES[1:])}")
    names = [BASELINE, *(n for n in chosen if n != CACHE_DIT)]
    cache_dit = None
    cache_dit_note = "cache-dit not run"
    if CACHE_DIT in chosen:
        try:
            import cache_dit

            cache_dit_note = f"cache-dit {cache_dit.__version__}"
        except Exception as err:  # not installed, or its import fails against this diffusers
            cache_dit, cache_dit_note = None, f"cache-dit not available ({error_line(err)})"
    out = Path(args.out) if args.out else RESULTS_DIR
    path = out / "models.json"
    previous = json.loads(path.read_text()) if args.update and path.exists() else None
    if previous is not None and previous["steps"] != args.steps:
        parser.error(f"--update: {path} holds {previous['steps']}-step figures; this run would make {args.steps} steps")
    started = time.perf_counter()
    machine = machine_info()
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
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join([".venv/bin/python benchmarks/models.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    run = {"command": command, "machine": machine, "rounds": args.rounds, "cache_dit": cache_dit_note,
           "seconds": time.perf_counter() - started, "families": list(args.families),
           "variants": names + ([CACHE_DIT] if cache_dit is not None else [])}
    record = merge(previous, args.steps, run, results)
    path.write_text(json.dumps(record, indent=2))
    print(table(record["results"]))
    print()
    for index, past in enumerate(record["runs"]):
        print(run_line(index, past, record["steps"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
