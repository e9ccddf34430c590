"""What an embedded model learned: ``python -m cachekit.zoo.samples --out docs/img/moving-shapes.png``
(``--model moving-shapes-wan --out docs/img/moving-shapes-wan.png`` for the Wan one).

Generates every trained prompt at each seed, prints the rates of :func:`moving_shapes.judge`'s
tests (colour, crisp, coherent, direction) and writes the first seed's clips as a sample grid.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch

from . import GUIDANCE, MODELS, media
from . import moving_shapes as world
from .weights import build_pipeline, call_kwargs, info, weights_path


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="moving-shapes", choices=MODELS)
    parser.add_argument("--out", default="moving-shapes.png", help="the sample grid (PNG)")
    parser.add_argument("--weights", help="a weights file (default: the package's, for --model)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, help="default: the model's (1.5 for moving-shapes, 2 for the Wan)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    path = Path(args.weights or weights_path(args.model))
    guidance = GUIDANCE[args.model] if args.guidance is None else args.guidance
    pipe = build_pipeline(path)
    prompts = world.prompts()
    clips = [pipe(**call_kwargs(prompts, args.steps, seed, guidance, path)).frames for seed in args.seeds]
    rates = world.rates(torch.cat(clips), prompts * len(args.seeds))
    print(f"{info(path)['training_steps']} training steps; {len(prompts)} prompts x seeds {args.seeds}, "
          f"{args.steps} steps, guidance {guidance:g}: " + ", ".join(f"{k} {v:.0%}" for k, v in rates.items()))
    media.grid([world.to_unit(c) for c in clips[0]], prompts, args.out)
    print(f"wrote {args.out}")
    return rates


if __name__ == "__main__":
    main()
