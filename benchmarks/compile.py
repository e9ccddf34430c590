"""torch.compile with cachekit on CPU (inductor): graphs and recompiles, and whether caching keeps the
compiled speed.

Part 1, graphs: for each config (a denoiser plan, attention sites, the block stack with an online
policy) and each way of compiling (the whole transformer, or each block in place), compiled before
or after ``cachekit.enable``: graphs and recompiles over three runs of 6, 6 and 10 steps, beside
the uncached model compiled the same way (``cachekit.testing.GraphCounter`` around inductor).

Part 2, speed: a Wan transformer (4 layers, 4 heads x 32; 1,280 video tokens per branch; split CFG,
the Wan pipeline) timed interleaved: eager uncached, compiled uncached, and compiled with
``step_reuse`` interval 2; the compiled cached run's speedup over compiled alone is set against the
plan's ideal speedup (uncached FLOPs over executed FLOPs).

``python benchmarks/compile.py [--rounds 5] [--steps 20] [--out DIR]``
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cachekit  # noqa: E402
from benchmarks.common import RESULTS_DIR, Variant, machine_info, machine_line, markdown_table, time_interleaved, write_result  # noqa: E402
from cachekit.testing import GraphCounter  # noqa: E402
from tests.pipelines import tiny_wan_pipeline, wan_call  # noqa: E402

STEP_REUSE = {"policy": [{"type": "step_reuse", "interval": 2}]}
CONFIGS = {"step_reuse interval 2": STEP_REUSE, "fastercache": "fastercache",
           "first_block 0.1": {"policy": [{"type": "first_block", "threshold": 0.1}]}}
#: The timed model: Wan blocks at 4 heads x 32, 4 layers; 5 latent frames of 32 x 32 (patch 2x2).
TIMED_SIZES = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=4,
                   text_dim=64, freq_dim=64, ffn_dim=512, num_layers=4, cross_attn_norm=True,
                   qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
TIMED_LATENT = (5, 32, 32)


def frames(pipe: Any, steps: int, latent: tuple[int, int, int] | None = None) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipe(**wan_call(pipe, steps, **({"latent": latent} if latent else {}))).frames


def compile_model(pipe: Any, counter: GraphCounter, where: str) -> None:
    if where == "whole":
        pipe.transformer = torch.compile(pipe.transformer, backend=counter)
    else:
        for block in pipe.transformer.blocks:
            block.compile(backend=counter)


def graph_row(config: Any, where: str, order: str) -> dict[str, Any]:
    torch._dynamo.reset()
    pipe, counter = tiny_wan_pipeline(), GraphCounter(torch._inductor.compile)
    if order == "before":
        compile_model(pipe, counter, where)
    if config is not None:
        cachekit.enable(pipe, config)
    if order == "after":
        compile_model(pipe, counter, where)
    first = frames(pipe, 6)
    graphs = counter.graphs
    frames(pipe, 6)
    frames(pipe, 10)
    return {"graphs first run": graphs, "graphs later runs": counter.graphs - graphs, "recompiles": counter.recompiles,
            "nodes": "+".join(map(str, counter.nodes)), "finite": bool(torch.isfinite(first).all())}


def graphs_table() -> list[dict[str, Any]]:
    rows = []
    for where in ("whole", "blocks"):
        rows.append({"config": "uncached", "compiled": where, "order": "", **graph_row(None, where, "after")})
        for name, config in CONFIGS.items():
            for order in ("before", "after"):
                rows.append({"config": name, "compiled": where, "order": order, **graph_row(config, where, order)})
    return rows


def timed_pipeline() -> Any:
    from diffusers import WanTransformer3DModel

    pipe = tiny_wan_pipeline()
    torch.manual_seed(0)
    pipe.transformer = WanTransformer3DModel(**TIMED_SIZES).eval()
    return pipe


def speed(rounds: int, steps: int) -> dict[str, Any]:
    torch._dynamo.reset()
    eager, compiled, cached = timed_pipeline(), timed_pipeline(), timed_pipeline()
    compiled.transformer = torch.compile(compiled.transformer)
    session = cachekit.enable(cached, STEP_REUSE)
    cached.transformer = torch.compile(cached.transformer)
    variants = [Variant(name, (lambda pipe=pipe: frames(pipe, steps, TIMED_LATENT)))
                for name, pipe in (("eager", eager), ("compiled", compiled), ("compiled + step_reuse 2", cached))]
    timings = time_interleaved(variants, rounds, warmup=1)
    ideal = 1 / session.report().compute_fraction
    alone = timings.median_speedup("compiled", "eager")
    both = timings.median_speedup("compiled + step_reuse 2", "eager")
    return {"rows": timings.summary("eager"), "ideal_speedup": ideal, "compiled_speedup": alone,
            "compiled_cached_speedup": both, "efficiency": both / (alone * ideal), "steps": steps, "rounds": rounds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    info = machine_info(threads=1)
    rows = graphs_table()
    print(markdown_table(rows, [(k, k, "") for k in ("config", "compiled", "order", "graphs first run",
                                                      "graphs later runs", "recompiles", "nodes")]))
    timed = speed(args.rounds, args.steps)
    print(markdown_table(timed["rows"], [("variant", "variant", ""), ("median s", "median_s", ".3f"),
                                         ("median ratio", "median_ratio", ".3f")]))
    print(f"ideal speedup {timed['ideal_speedup']:.3f}; compiled alone {timed['compiled_speedup']:.3f}x; compiled + "
          f"step_reuse {timed['compiled_cached_speedup']:.3f}x; efficiency {timed['efficiency']:.3f}")
    print(machine_line(info))
    write_result("compile", {"machine": info, "graphs": rows, "speed": timed}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
