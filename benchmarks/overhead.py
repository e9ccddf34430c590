"""Hook overhead: cachekit enabled with a plan that computes every node vs. the plain pipeline.

An all-compute plan (``reuse`` with ``interval: 1``) does the same tensor work as no cachekit at
all, so any extra wall time is the cost of the hooks and the runtime's bookkeeping. Hooking every
site (attention, MLP and whole blocks) is the worst case. Run from the repository root:

    .venv/bin/python benchmarks/overhead.py [--rounds 15] [--steps 20]

Writes benchmarks/results/overhead.json and prints a markdown table. Targets: median ratio <= 1.02
with every site hooked, <= 1.01 with the attention sites only. The CPU-time ratio (process time,
not charged while other processes hold the CPU) is printed beside the wall-time one. A second
uncached pipeline is timed as a control: its ratio shows how far apart two identical variants land.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cachekit  # noqa: E402
from cachekit.demo import demo_call, tiny_latte_pipeline  # noqa: E402
from common import RATIO_COLUMNS, Variant, machine_info, machine_line, markdown_table, time_interleaved, write_result  # noqa: E402

BASELINE = "uncached"
#: A second uncached pipeline built the same way: its ratio is the noise floor of the measurement.
CONTROL = "uncached (second copy)"
TARGETS = {"cachekit all-compute": 1.02, "cachekit all-compute (attention sites only)": 1.01}
SEED = 0
CONFIGS = {
    "cachekit all-compute": {"policy": [{"type": "reuse", "interval": 1, "sites": {"kinds": ["attn", "mlp", "block"]}}]},
    "cachekit all-compute (attention sites only)": {"policy": [{"type": "reuse", "interval": 1}]},
}


def count_site_calls(pipe, session, steps: int) -> int:
    """Calls to the hooked modules in one (untimed) pipeline call: what the hooks intercept per run."""
    calls = [0]

    def count(module, inputs):
        calls[0] += 1

    handles = [session.adapter.module(site).register_forward_pre_hook(count) for site in session.planned_sites]
    try:
        pipe(**demo_call(pipe, steps=steps))
    finally:
        for handle in handles:
            handle.remove()
    return calls[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument("--steps", type=int, default=20, help="inference steps per call (default 20)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls per variant (default 1)")
    parser.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    parser.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    args = parser.parse_args(argv)

    with warnings.catch_warnings():
        # An all-compute plan makes cachekit warn (at the end of every run) that the policy made no
        # decision other than compute; that is the point of this benchmark.
        warnings.simplefilter("ignore", UserWarning)

        # One pipeline per variant, all built from the same seed: enable() is not timed.
        pipes = {BASELINE: tiny_latte_pipeline(seed=SEED), CONTROL: tiny_latte_pipeline(seed=SEED)}
        sessions = {}
        for name, config in CONFIGS.items():
            pipes[name] = tiny_latte_pipeline(seed=SEED)
            sessions[name] = cachekit.enable(pipes[name], config, profile=True)

        def variant(name: str) -> Variant:
            pipe = pipes[name]
            return Variant(name, lambda kwargs: pipe(**kwargs).frames, setup=lambda: demo_call(pipe, steps=args.steps))

        progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
        timings = time_interleaved([variant(n) for n in pipes], rounds=args.rounds, warmup=args.warmup, progress=progress)

        reports = {name: session.report() for name, session in sessions.items()}
        hook_calls = {name: count_site_calls(pipes[name], session, args.steps) for name, session in sessions.items()}
        for name in sessions:
            cachekit.disable(pipes[name])

    equal = {
        name: bool(torch.equal(timings.warmup_results[name], timings.warmup_results[BASELINE])
                   and torch.equal(timings.last_results[name], timings.last_results[BASELINE]))
        for name in sessions
    }
    rows = timings.summary(BASELINE)
    for row in rows:
        name = row["variant"]
        row["bitwise_equal_to_uncached"] = equal.get(name)
        if name in sessions:
            session, report = sessions[name], reports[name]
            row["config"] = CONFIGS[name]
            row["hooked_sites"] = [s.name for s in session.planned_sites]
            row["hook_calls_per_run"] = hook_calls[name]
            row["nodes_per_run"] = len(report.executed)
            row["executed"] = report.counts()

    info = machine_info()
    payload = {
        "benchmark": "overhead",
        "machine": info,
        "parameters": {
            "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup, "seed": SEED,
            "pipeline": "cachekit.demo.tiny_latte_pipeline() (LattePipeline, 2 layers, 4 frames, 8x8 latents)",
            "call": "demo_call(pipe, steps) (guidance 7.5, output_type latent)",
            "baseline": BASELINE, "target_median_ratio": TARGETS,
            "timing": "interleaved rounds, order rotated by one per round; median over rounds; "
                      "ratio = median over rounds of variant/uncached in the same round",
        },
        "variants": rows,
    }
    path = write_result("overhead", payload, args.out)

    table_rows = [{**r, "hooks": r.get("hook_calls_per_run", 0),
                   "equal": "" if r["bitwise_equal_to_uncached"] is None else ("yes" if r["bitwise_equal_to_uncached"] else "NO")}
                  for r in rows]
    columns = (*RATIO_COLUMNS, ("median ratio (CPU time)", "median_cpu_ratio", ".3f"), ("hook calls/run", "hooks", "d"),
               ("bitwise equal", "equal", ""))
    print(f"## Hook overhead ({args.rounds} rounds, {args.steps} steps)\n")
    print(markdown_table(table_rows, columns))
    print(f"\nmachine: {machine_line(info)}")
    for name, ok in equal.items():
        print(f"{name}: outputs bitwise equal to uncached: {ok}")
    for row in rows:
        target = TARGETS.get(row["variant"])
        if target is not None:
            verdict = "OK" if row["median_ratio"] <= target else "ABOVE TARGET"
            print(f"{row['variant']}: median ratio {row['median_ratio']:.3f} (CPU time {row['median_cpu_ratio']:.3f}), "
                  f"target <= {target}: {verdict}")
    print(f"wrote {path}")
    return 0 if all(equal.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
