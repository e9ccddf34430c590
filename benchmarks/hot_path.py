"""What a cached run costs besides its own computation, on every model family's tiny pipeline:
forwards and device reads.

For each family (the pipelines of ``benchmarks/models.py``, and Latte, CogVideoX, Wan and LTX-2 at
the tests' sizes; CFG, random weights) and each static
preset (``quality``, ``fast``, ``fastercache``), one uncached and one cached pipeline call:

- **branch evaluations**: the rows of the batch that enter the model's first transformer block in
  the denoising steps (``cachekit.testing.RowCounter.for_adapter``: calls for a model called once
  per branch; a call that is no step, such as a key/value cache fill, left out), over the call's
  batch size (a batched CFG call that computes both branches counts 2, one that computes the
  conditional branch only counts 1). Uncached, that is steps x branches; cached, it
  must equal the computes the plans hold for the denoiser, summed over the call's loops: no
  profiling forward, no extra call.
- **device reads**: tensor-to-Python conversions (``item``, ``float``, ``bool``, ``tolist``, ...)
  made by cachekit's own code after the run's first denoiser call (``cachekit.testing.DeviceReads``);
  each is a host sync on an accelerator. A static plan's run makes none per call: at most one
  after its first call, and three for each further denoising loop of a call (its start is placed
  from its schedule).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cachekit  # noqa: E402
from benchmarks.common import RESULTS_DIR, machine_info, machine_line  # noqa: E402
from benchmarks.models import BUILD, call_kwargs  # noqa: E402
from cachekit.demo import demo_call, tiny_latte_pipeline  # noqa: E402
from cachekit.policy import COMPUTE  # noqa: E402
from cachekit.testing import READS_AFTER_FIRST_CALL, READS_PER_LATER_LOOP, DeviceReads, RowCounter  # noqa: E402
from tests.pipelines import cogvideox_call, tiny_cogvideox_pipeline, tiny_wan_pipeline, wan_call  # noqa: E402
from tests.pipelines_ltx2 import ltx2_call, tiny_ltx2_pipeline  # noqa: E402

PRESETS = ("quality", "fast", "fastercache")
#: Families besides ``benchmarks.models``': (builder, call).
TESTS = {"latte": (tiny_latte_pipeline, lambda pipe, steps: demo_call(pipe, steps=steps)),
         "cogvideox": (tiny_cogvideox_pipeline, cogvideox_call), "wan": (tiny_wan_pipeline, wan_call),
         "ltx2": (tiny_ltx2_pipeline, ltx2_call)}
FAMILIES = [*TESTS, *BUILD]


def call(pipe: Any, kwargs: dict[str, Any]) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", UserWarning)
        pipe(**kwargs)


def measure(family: str, steps: int) -> list[dict[str, Any]]:
    if family in TESTS:
        build, make_call = TESTS[family]
        pipe = build()
        kwargs = make_call(pipe, steps)
    else:
        pipe = BUILD[family]()
        kwargs = call_kwargs(family, pipe, steps)
    adapter = cachekit.find_adapter(pipe.transformer, pipe)
    with RowCounter.for_adapter(adapter) as uncached:
        call(pipe, kwargs)
    rows = []
    for preset in PRESETS:
        session = cachekit.enable(pipe, preset)
        try:
            with RowCounter.for_adapter(adapter) as cached, DeviceReads(pipe.transformer, adapter.is_step_call) as reads:
                call(pipe, kwargs)
        finally:
            cachekit.disable(pipe)
        runs = session.runtime.call_runs
        evaluations = sum(run.plan.num_steps * len(run.plan.branches) for run in runs)
        per_evaluation = uncached.rows / evaluations
        planned = sum(run.plan.action((step, "denoiser", branch)).kind == COMPUTE
                      for run in runs for step in range(run.plan.num_steps) for branch in run.plan.branches)
        rows.append({"family": family, "preset": preset, "loops": len(runs), "uncached": evaluations,
                     "planned": planned, "measured": cached.rows / per_evaluation, "denoiser_calls": reads.calls,
                     "device_reads": reads.count,
                     "allowed_reads": READS_AFTER_FIRST_CALL + READS_PER_LATER_LOOP * (len(runs) - 1)})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model (adapter) | preset | loops | uncached evaluations | planned computes | measured | "
             "denoiser calls | device reads after the first call (allowed) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['preset']} | {r['loops']} | {r['uncached']} | {r['planned']} | "
                     f"{r['measured']:g} | {r['denoiser_calls']} | {r['device_reads']} ({r['allowed_reads']}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=FAMILIES, choices=FAMILIES, help="default: all")
    parser.add_argument("--steps", type=int, default=10, help="inference steps per call (default 10)")
    parser.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for family in args.families:
        measured = measure(family, args.steps)
        rows += measured
        print("\n".join(table(measured).splitlines()[2:]), flush=True)
    bad = [r for r in rows if r["measured"] != r["planned"] or r["device_reads"] > r["allowed_reads"]]
    out = Path(args.out) if args.out else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / "hot_path.json").write_text(json.dumps({"machine": machine_info(1), "steps": args.steps, "rows": rows},
                                                  indent=1) + "\n")
    print(table(rows))
    print(machine_line(machine_info(1)))
    print("every cached call: forwards = planned computes, device reads within bounds" if not bad
          else f"{len(bad)} rows off: {[(r['family'], r['preset']) for r in bad]}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
