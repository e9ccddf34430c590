"""The ``cachekit`` command: list what is registered, plan a config on a model, run the demo."""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import sys
from typing import Any, Sequence

from .errors import CachekitError


def _load_model(spec: str) -> Any:
    """``demo`` (the embedded tiny Latte pipeline) or ``module:factory`` returning a pipeline or transformer."""
    if spec == "demo":
        from .demo import tiny_latte_pipeline

        return tiny_latte_pipeline()
    module, _, attr = spec.partition(":")
    if not attr:
        raise CachekitError(f"--model {spec!r}: expected 'demo' or 'package.module:factory'")
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
    """Run the embedded demo pipeline uncached and cached (each once to warm up, then timed); print
    the report, the measured speedup and the latent error."""
    import time

    import torch

    from .api import disable, enable
    from .demo import demo_call, tiny_latte_pipeline

    torch.set_num_threads(1)
    pipe = tiny_latte_pipeline()

    def timed() -> tuple[torch.Tensor, float]:
        pipe(**demo_call(pipe, steps=args.steps))  # warm-up (cached: plans and measures the model)
        start = time.perf_counter()
        frames = pipe(**demo_call(pipe, steps=args.steps)).frames
        return frames, time.perf_counter() - start

    reference, uncached = timed()
    session = enable(pipe, args.config)
    try:
        cached, seconds = timed()
    finally:
        disable(pipe)
    print(session.report().text())
    error = (cached - reference).norm() / reference.norm()
    print(f"\nmeasured speedup: {uncached / seconds:.2f}x ({uncached:.3f} s uncached, {seconds:.3f} s cached, one timed run each)")
    print(f"final latents vs uncached: relative L2 {error:.4f}")
    return 0


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
    run = sub.add_parser("run", help="run the embedded demo model with a config and report")
    run.add_argument("--config", default="fastercache")
    run.add_argument("--steps", type=int, default=30)
    run.set_defaults(fn=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except CachekitError as err:
        print(f"cachekit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
