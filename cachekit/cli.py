"""The ``cachekit`` command: list what is registered, plan a config on a model, run a model cached and uncached,
calibrate MagCache's ratios on a pipeline, tune a plan for a model and a budget."""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import sys
from typing import Any, Sequence

from .api import DEFAULT_CONFIG
from .errors import CachekitError


def _load_model(spec: str) -> Any:
    """``demo`` (the embedded tiny Latte pipeline), an embedded trained model (``moving-shapes``, the
    model ``cachekit run`` uses) or ``module:factory`` returning a pipeline or transformer."""
    from .zoo import MODELS, load

    if spec == "demo":
        from .demo import tiny_latte_pipeline

        return tiny_latte_pipeline()
    if spec in MODELS:
        return load(spec)
    module, _, attr = spec.partition(":")
    if not attr:
        raise CachekitError(f"--model {spec!r}: expected 'demo', {', '.join(MODELS)} or 'package.module:factory'")
    return getattr(importlib.import_module(module), attr)()


def cmd_list(args: argparse.Namespace) -> int:
    from .registry import registry

    reg = registry()
    for kind in reg.KINDS:
        print(f"{reg.TITLES[kind]}:")
        for entry in reg.entries(kind):
            print(f"  {entry.name:<24} {entry.source}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .api import disable, enable

    target = _load_model(args.model)
    model = getattr(target, "transformer", target)
    timesteps = None
    if hasattr(target, "scheduler"):  # plan with the pipeline's own timesteps, as a run would
        scheduler = copy.deepcopy(target.scheduler)
        scheduler.set_timesteps(args.steps)
        timesteps = [float(t) for t in scheduler.timesteps.tolist()]
    session = enable(model, args.config, num_inference_steps=args.steps, cfg=not args.no_cfg, timesteps=timesteps)
    try:
        plan = session.plan_for(args.steps, timesteps, cfg=not args.no_cfg)
        prediction = session.predict(plan)
    finally:
        disable(model)
    counts = plan.counts()
    total = sum(counts.values())
    if args.json:
        data = plan.to_dict()
        data["prediction"] = {"speedup": prediction.speedup, "speedup_bound": prediction.speedup_bound, "basis": prediction.basis,
                              "peak_cache_bytes": prediction.peak_cache_bytes,
                              "step_fractions": list(prediction.step_fractions)}
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        print(f"plan: {args.config} on {type(model).__name__}, {args.steps} steps, branches {', '.join(plan.branches)}")
        print(f"nodes: {total} ({', '.join(f'{k} {v}' for k, v in counts.items() if v)}); "
              f"compute fraction {counts['compute'] / total:.1%}")
        print(f"predicted speedup: {prediction.speedup:.2f}x"
              + (f" (up to {prediction.speedup_bound:.2f}x online)" if prediction.speedup_bound != prediction.speedup else "")
              + f", from {'timed calls' if prediction.basis == 'seconds' else 'FLOP counts'}")
        print(f"predicted peak cache: {prediction.peak_cache_bytes / 2**20:.2f} MiB")
        print()
        print(plan.grid())
    if args.dot:
        with open(args.dot, "w") as f:
            f.write(plan.to_dot())
    if args.png:
        from .plot import plan_heatmap

        plan_heatmap(plan, args.png, title=f"{args.config}: {prediction.speedup:.2f}x predicted")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Generate a clip uncached and cached, print speedup, PSNR, SSIM and the session report, and
    write a side-by-side video and the plan heatmap to ``--out``."""
    import torch

    from . import evaluate
    from .plot import plan_heatmap
    from .zoo import MODELS, media

    evaluate.require("imageio", "torchmetrics", "matplotlib")
    out = _writable(args.out)  # before minutes of generating, not after
    torch.set_num_threads(args.threads)
    args.guidance = _guidance(args)
    if args.model in MODELS:
        job = evaluate.zoo_job(args.model, args.steps, args.guidance, [args.prompt])
    else:
        job = evaluate.hub_job(args.model, args.steps, args.guidance, [args.prompt])
    job.pipe.set_progress_bar_config(disable=args.quiet, leave=False)
    config = args.config
    print(f"model: {job.label}\nprompt: {args.prompt!r}, seed {args.seed}, config {config!r}", flush=True)
    result, session = evaluate.compare(job, config, job.prompts, args.seed, repeats=args.repeats)
    report = session.report()
    print(report.text())
    print(f"\nmeasured speedup: {result.speedup:.2f}x (median of {args.repeats} interleaved runs: "
          f"{result.uncached_seconds:.3f} s uncached, {result.cached_seconds:.3f} s cached)")
    print(f"cached vs uncached: PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.4f}")
    difference = ((result.cached - result.reference).abs() * args.amplify).clamp(0, 1)
    video = media.side_by_side([result.reference[0], result.cached[0], difference[0]], out / "side-by-side.gif",
                               ["uncached", f"cached {result.speedup:.2f}x", f"difference x{args.amplify:g}"])
    heatmap = out / "plan.png"
    plan_heatmap(session.plan, str(heatmap),
                 title=f"{config}: {report.predicted_speedup or 1:.2f}x predicted, {result.speedup:.2f}x measured")
    measured = {"speedup": result.speedup, "psnr": result.psnr, "ssim": result.ssim, "repeats": args.repeats,
                "uncached_seconds": result.uncached_seconds, "cached_seconds": result.cached_seconds,
                "model": job.label, "prompt": args.prompt, "seed": args.seed, "config": str(config)}
    (out / "report.json").write_text(json.dumps({**report.to_dict(), "measured": measured}, indent=2))
    print(f"\nwrote {video} (uncached | cached | difference x{args.amplify:g}), {heatmap} and {out / 'report.json'}")
    return 0


def _guidance(args: argparse.Namespace) -> float:
    """``--guidance``, or the embedded model's own default (1.5 for any other model)."""
    from .zoo import GUIDANCE

    return args.guidance if args.guidance is not None else GUIDANCE.get(args.model, 1.5)


def cmd_bench(args: argparse.Namespace) -> int:
    """The policy grid and the peers on the embedded model: markdown, JSON and a Pareto plot."""
    from pathlib import Path

    import torch

    from . import bench, evaluate
    from .zoo import moving_shapes

    evaluate.require("torchmetrics", "matplotlib")
    _writable(args.out)
    previous = Path(args.out) / "bench.json"
    if args.update and not previous.is_file():
        raise CachekitError(f"--update: {previous} does not exist; run the bench into --out first")
    torch.set_num_threads(1)
    args.guidance = _guidance(args)
    prompts = moving_shapes.prompts()[: args.prompts]
    job = evaluate.zoo_job(args.model, args.steps, args.guidance, prompts)
    job.pipe.set_progress_bar_config(disable=True)
    results = bench.run_bench(job, args.steps, args.seeds, args.repeats, peers=not args.no_peers,
                              progress=lambda line: print(line, flush=True), only=args.only)
    title = f"{job.label}: {len(prompts)} prompts x seeds {', '.join(map(str, args.seeds))}, 1 thread"
    meta = {"model": args.model, "steps": args.steps, "guidance": args.guidance, "prompts": prompts,
            "seeds": list(args.seeds), "repeats": args.repeats, "torch": torch.__version__}
    if args.update:
        try:
            results = bench.merged(json.loads(previous.read_text()), results, meta)
        except ValueError as err:
            raise CachekitError(f"--update {previous}: {err}") from None
    paths = bench.write(results, args.out, title, meta)
    print(bench.markdown(results, title))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Run a pipeline once uncached and write MagCache's per-step magnitude ratios to a config file."""
    import torch

    from .calibration import measure

    if not args.out.endswith(".toml"):
        raise CachekitError(f"--out {args.out!r}: calibrate writes TOML; name a .toml file")
    torch.set_num_threads(args.threads)
    if ":" in args.model:
        pipe = _load_model(args.model)
    else:
        from .evaluate import hub_job

        pipe = hub_job(args.model, args.steps, args.guidance, [args.prompt]).pipe
    if args.call:
        module, _, attr = args.call.partition(":")
        if not attr:
            raise CachekitError(f"--call {args.call!r}: expected 'package.module:function'")
        kwargs = getattr(importlib.import_module(module), attr)(pipe, args.steps)
    else:
        kwargs = dict(prompt=args.prompt, num_inference_steps=args.steps, guidance_scale=args.guidance,
                      generator=torch.Generator().manual_seed(args.seed), output_type="latent")
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=args.quiet)
    calibration = measure(pipe, **kwargs)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(calibration.toml())
    for (unit, expert), ratios in sorted(calibration.ratios.items(), key=lambda item: (item[0][1], item[0][0])):
        which = f", expert {expert + 1}" if calibration.boundary is not None else ""
        print(f"{unit}{which}: {len(ratios)} ratios, {min(ratios):.4f} .. {max(ratios):.4f}")
    print(f"wrote {args.out}: load it with cachekit.enable(pipe, {args.out!r})")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Search the best plan for a FLOPs budget (or a PSNR floor) on calibration prompts; write it as a config."""
    from pathlib import Path

    import torch

    from . import evaluate
    from .tuning import tune_job
    from .zoo import MODELS, moving_shapes

    evaluate.require("torchmetrics", "matplotlib")
    out = Path(args.out)
    if out.suffix != ".toml":
        raise CachekitError(f"--out {args.out!r}: tune writes TOML; name a .toml file")
    _writable(str(out.parent))
    torch.set_num_threads(args.threads)
    args.guidance = _guidance(args)
    if args.model in MODELS:
        vocabulary = moving_shapes.prompts()
        prompts = args.prompt or vocabulary[: args.prompts]
        holdout = args.holdout or [p for p in vocabulary if p not in prompts][: args.prompts]
        job = evaluate.zoo_job(args.model, args.steps, args.guidance, prompts)
    else:
        if not args.prompt:
            raise CachekitError("--prompt: a hub or local pipeline needs calibration prompts (give --prompt several times)")
        prompts, holdout = args.prompt, args.holdout
        job = evaluate.hub_job(args.model, args.steps, args.guidance, prompts)
    job.pipe.set_progress_bar_config(disable=args.quiet, leave=False)
    tuned = tune_job(job, budget=args.budget, min_psnr=args.min_psnr, prompts=prompts, seed=args.seed,
                     holdout=holdout, cache_dir=args.cache, progress=lambda line: print(line, flush=True))
    print(tuned.table())
    written = []
    for objective, config in tuned.configs.items():
        path = out if len(tuned.configs) == 1 else out.with_name(f"{out.stem}-{objective.split()[-1]}{out.suffix}")
        path.write_text(tuned.toml(objective), encoding="utf-8")
        written.append(path)
        held = config.tuned
        extra = (f"; held out ({len(held['holdout_prompts'])} prompts): {held['holdout_psnr']:.2f} dB"
                 if "holdout_psnr" in held else "")
        print(f"{objective}: {held['fraction']:.3f} of the FLOPs, {held['psnr']:.2f} dB on calibration{extra} -> {path}")
    front = tuned.plot(out.with_name(f"{out.stem}-front.png"))
    print(f"wrote {', '.join(map(str, written))} and {front}: load with cachekit.enable(pipe, {str(written[0])!r})")
    return 0


def _writable(folder: str) -> Any:
    """``folder`` created if needed, once it is known that files can be written there."""
    import tempfile
    from pathlib import Path

    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise CachekitError(f"--out {str(out)!r}: cannot write there ({reason}); choose another folder") from None
    return out


#: Numeric options and their least value (None: any finite number), per command.
_NUMBERS = {
    "plan": {"steps": 1},
    "run": {"steps": 1, "repeats": 1, "threads": 1, "amplify": 0, "guidance": 0},
    "bench": {"steps": 1, "repeats": 0, "prompts": 1, "seeds": 0, "guidance": 0},
    "tune": {"steps": 2, "prompts": 1, "seed": 0, "guidance": 0, "threads": 1},
}


def _check_numbers(args: argparse.Namespace) -> None:
    """Every numeric option in its range, or a one-line error naming it."""
    import math

    for name, least in _NUMBERS.get(args.command, {}).items():
        values = getattr(args, name)
        for value in values if isinstance(values, list) else [values]:
            if value is None:  # unset: the model's own default
                continue
            if not math.isfinite(value) or value < least or (name == "amplify" and value == 0):
                need = "a positive number" if name == "amplify" else f"at least {least}"
                raise CachekitError(f"--{name} must be {need}, got {value:g}")
    if args.command == "bench" and args.prompts > 16:
        raise CachekitError(f"--prompts must be at most 16 (the embedded model's prompts), got {args.prompts}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cachekit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered policies, adapters, presets and kernels, with their sources").set_defaults(fn=cmd_list)
    plan = sub.add_parser("plan", help="dry run: the steps x sites plan, predicted speedup and cache bytes")
    plan.add_argument("--config", default="naive-reuse", help="preset, policy name or config file (default: naive-reuse)")
    plan.add_argument("--model", default="demo", help="'demo' or package.module:factory (default: demo)")
    plan.add_argument("--steps", type=int, default=50)
    plan.add_argument("--no-cfg", action="store_true", help="plan a run without classifier-free guidance")
    plan.add_argument("--json", action="store_true", help="print the plan and prediction as JSON")
    plan.add_argument("--dot", metavar="FILE", help="write the plan graph as Graphviz DOT")
    plan.add_argument("--png", metavar="FILE", help="write the plan as a heatmap (needs matplotlib)")
    plan.set_defaults(fn=cmd_plan)
    run = sub.add_parser("run", help="generate a clip uncached and cached: speedup, PSNR/SSIM, report, video")
    run.add_argument("--model", default="moving-shapes",
                     help="an embedded model (moving-shapes, the default, or moving-shapes-wan), or a diffusers "
                          "pipeline's local path or hub id")
    run.add_argument("--prompt", default="red square moving right")
    run.add_argument("--config", "--policy", dest="config", default=DEFAULT_CONFIG,
                     help=f"preset, policy name or config file (default: {DEFAULT_CONFIG}, as cachekit.enable)")
    run.add_argument("--steps", type=int, default=30)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--guidance", type=float,
                     help="classifier-free guidance scale (default: the embedded model's, else 1.5)")
    run.add_argument("--out", default="cachekit-run", help="output folder (default: cachekit-run)")
    run.add_argument("--repeats", type=int, default=3, help="timed runs of each, interleaved (default: 3)")
    run.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, for stable timings)")
    run.add_argument("--amplify", type=float, default=4.0, help="scale of the difference panel (default: 4)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(fn=cmd_run)
    bench = sub.add_parser("bench", help="policies and peers on the embedded model: speed, PSNR/SSIM, Pareto plot")
    bench.add_argument("--model", default="moving-shapes",
                       help="an embedded model: moving-shapes (default) or moving-shapes-wan")
    bench.add_argument("--steps", type=int, default=30)
    bench.add_argument("--guidance", type=float, help="default: the model's (1.5 for moving-shapes)")
    bench.add_argument("--prompts", type=int, default=16, help="how many of the 16 prompts (default: all)")
    bench.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    bench.add_argument("--repeats", type=int, default=2,
                       help="timed rounds over the rows per seed (default: 2; 0: FLOPs and quality only)")
    bench.add_argument("--no-peers", action="store_true", help="cachekit rows only")
    bench.add_argument("--only", nargs="+", default=[], metavar="PATTERN",
                       help="the rows whose name matches a shell pattern, e.g. 'preset *' 'diffusers *' (and uncached)")
    bench.add_argument("--out", default="cachekit-bench", help="output folder (default: cachekit-bench)")
    bench.add_argument("--update", action="store_true",
                       help="measure the --only rows again into the bench already in --out (same settings): rows of "
                            "the same name are replaced, new ones added")
    bench.set_defaults(fn=cmd_bench)
    calibrate = sub.add_parser("calibrate", help="one uncached run: MagCache's per-step magnitude ratios into a config file")
    calibrate.add_argument("--model", required=True,
                           help="package.module:factory returning a pipeline, or a diffusers pipeline's local path or hub id")
    calibrate.add_argument("--call", metavar="MODULE:FUNCTION",
                           help="function(pipe, steps) returning the call's keyword arguments (default: --prompt, "
                                "--steps, --guidance, --seed, latent output)")
    calibrate.add_argument("--prompt", default="a red square moving right")
    calibrate.add_argument("--steps", type=int, default=50, help="the step count to calibrate for (default: 50)")
    calibrate.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default: 5)")
    calibrate.add_argument("--seed", type=int, default=0)
    calibrate.add_argument("--out", default="magcache.toml", help="config file to write (default: magcache.toml)")
    calibrate.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    calibrate.add_argument("--quiet", action="store_true", help="no progress bar")
    calibrate.set_defaults(fn=cmd_calibrate)
    tune = sub.add_parser("tune", help="search the best plan for a FLOPs budget or a PSNR floor; write it as a config")
    tune.add_argument("--model", default="moving-shapes",
                      help="an embedded model (moving-shapes, moving-shapes-wan) or a diffusers pipeline's local path or hub id")
    objective = tune.add_mutually_exclusive_group(required=True)
    objective.add_argument("--budget", type=float, nargs="+", metavar="F",
                           help="at most F of the uncached FLOPs (0 < F <= 1), best PSNR; several give one config each")
    objective.add_argument("--min-psnr", type=float, metavar="DB", help="the fewest FLOPs at DB or more against uncached")
    tune.add_argument("--steps", type=int, default=30)
    tune.add_argument("--guidance", type=float, help="default: the embedded model's, else 1.5")
    tune.add_argument("--prompts", type=int, default=8,
                      help="embedded models: calibrate on the first N of their 16 prompts (default: 8)")
    tune.add_argument("--prompt", action="append", default=[], help="a calibration prompt (repeat for several)")
    tune.add_argument("--holdout", action="append", default=[],
                      help="a held-out prompt the chosen plan is also measured on (default for embedded models: the "
                           "prompts not calibrated on)")
    tune.add_argument("--seed", type=int, default=1000, help="calibration seed (default: 1000)")
    tune.add_argument("--out", default="tuned.toml", help="config file to write (default: tuned.toml)")
    tune.add_argument("--cache", help="calibration data folder (default: $CACHEKIT_CACHE or ~/.cache/cachekit)")
    tune.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    tune.add_argument("--quiet", action="store_true", help="no progress bars")
    tune.set_defaults(fn=cmd_tune)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_numbers(args)
        return args.fn(args)
    except CachekitError as err:
        print(f"cachekit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
