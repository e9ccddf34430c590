"""What the embedded model learned: ``python -m cachekit.zoo.samples --out docs/img/moving-shapes.png``.

Generates every trained prompt at each seed, prints the rates of :func:`moving_shapes.judge`'s
tests (colour, crisp, coherent, direction) and writes the first seed's clips as a sample grid.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch

from . import load, media
from . import moving_shapes as world
from .weights import WEIGHTS, build_pipeline, call_kwargs, info


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="moving-shapes.png", help="the sample grid (PNG)")
    parser.add_argument("--weights", default=str(WEIGHTS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    path = Path(args.weights)
    pipe = build_pipeline(path) if path != WEIGHTS else load()
    prompts = world.prompts()
    clips = [pipe(**call_kwargs(prompts, args.steps, seed, args.guidance, path)).frames for seed in args.seeds]
    rates = world.rates(torch.cat(clips), prompts * len(args.seeds))
    print(f"{info(path)['training_steps']} training steps; {len(prompts)} prompts x seeds {args.seeds}, "
          f"{args.steps} steps, guidance {args.guidance}: " + ", ".join(f"{k} {v:.0%}" for k, v in rates.items()))
    media.grid([world.to_unit(c) for c in clips[0]], prompts, args.out)
    print(f"wrote {args.out}")
    return rates


if __name__ == "__main__":
    main()
