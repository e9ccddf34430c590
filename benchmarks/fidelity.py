"""FasterCache readings on the tiny Latte pipeline: paper mode, the official Latte schedule and
diffusers' FasterCache, each against the uncached run at its compute.

Compute is the FLOPs of the whole pipeline call (torch's FLOP counter, reconstruction kernels
included) as a fraction of the uncached call's. PSNR is of the final latents against the uncached
latents, with the uncached latents' value range as peak, averaged over seeds. Random weights: the
numbers rank the readings on this model; they say nothing of video quality. Run from the
repository root:

    .venv/bin/python benchmarks/fidelity.py [--steps 50] [--seeds 4]
    .venv/bin/python benchmarks/fidelity.py --model moving-shapes   # the embedded trained model

Writes benchmarks/results/fidelity.json (fidelity-moving-shapes.json) and prints a markdown table.
On the embedded model each seed generates all 16 prompts (guidance 1.5) and PSNR is of the clips'
pixels in [0, 1] against the uncached clips: a quality figure, not only a ranking.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cachekit  # noqa: E402
from cachekit import zoo  # noqa: E402
from cachekit.demo import demo_call, tiny_latte_pipeline  # noqa: E402
from cachekit.zoo import moving_shapes, weights  # noqa: E402
from common import machine_info, machine_line, markdown_table, write_result  # noqa: E402


def diffusers_fastercache(pipe: Any) -> Callable[[], None]:
    """diffusers' FasterCache with its documented defaults (attention weight 0.5)."""
    from diffusers import FasterCacheConfig

    pipe.transformer.enable_cache(FasterCacheConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 681),
        unconditional_batch_skip_range=5, unconditional_batch_timestep_skip_range=(-1, 641),
        attention_weight_callback=lambda _: 0.5, tensor_format="BCFHW",
        current_timestep_callback=lambda: pipe.current_timestep,
    ))
    return pipe.transformer.disable_cache


def cachekit_config(config: Any) -> Callable[[Any], Callable[[], None]]:
    def enable(pipe: Any) -> Callable[[], None]:
        cachekit.enable(pipe, config)
        return lambda: cachekit.disable(pipe)

    return enable


VARIANTS: dict[str, Callable[[Any], Callable[[], None]] | None] = {
    "uncached": None,
    "cachekit fastercache (paper mode)": cachekit_config("fastercache"),
    "cachekit fastercache/latte (official schedule)": cachekit_config("fastercache/latte"),
    "diffusers FasterCache": diffusers_fastercache,
}


def run(pipe: Any, steps: int, seed: int, model: str) -> tuple[torch.Tensor, float]:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        if model == "moving-shapes":
            clips = pipe(**weights.call_kwargs(moving_shapes.prompts(), steps=steps, seed=seed)).frames
            out = moving_shapes.to_unit(clips)
        else:
            out = pipe(**demo_call(pipe, steps=steps, seed=seed)).frames
    return out, counter.get_total_flops()


def psnr(out: torch.Tensor, reference: torch.Tensor) -> float:
    peak = (reference.max() - reference.min()).item()
    mse = torch.mean((out - reference) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--model", choices=["tiny-latte", "moving-shapes"], default="tiny-latte",
                        help="the tiny random Latte (a ranking) or the embedded trained model")
    args = parser.parse_args()
    pipe = zoo.load() if args.model == "moving-shapes" else tiny_latte_pipeline()
    rows = []
    references = {seed: run(pipe, args.steps, seed, args.model) for seed in range(args.seeds)}
    for name, enable in VARIANTS.items():
        scores, fractions = [], []
        for seed in range(args.seeds):
            disable = enable(pipe) if enable is not None else (lambda: None)
            try:
                latents, flops = run(pipe, args.steps, seed, args.model)
            finally:
                disable()
            reference, full = references[seed]
            fractions.append(flops / full)
            scores.append(psnr(latents, reference))
        finite = [s for s in scores if math.isfinite(s)]
        rows.append({"variant": name, "compute": 100 * statistics.mean(fractions),
                     "psnr_db": statistics.mean(finite) if finite else None})
    print(markdown_table(rows, [("variant", "variant", ""), ("compute, % of uncached FLOPs", "compute", ".1f"),
                                ("PSNR vs uncached, dB", "psnr_db", ".2f")]))
    info = machine_info()
    print(f"\n{machine_line(info)}")
    name = "fidelity" if args.model == "tiny-latte" else f"fidelity-{args.model}"
    write_result(name, {"model": args.model, "steps": args.steps, "seeds": args.seeds, "machine": info, "variants": rows})


if __name__ == "__main__":
    main()
