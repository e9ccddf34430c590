"""How the ``quality`` and ``fast`` presets were chosen: TaylorSeer lite variants beside the bench's
best rows, on an embedded model, 16 prompts x seeds 0 and 1, FLOPs and PSNR only (the bench's
procedure, ``cachekit.bench.run_bench`` with ``repeats=0``).

    python benchmarks/preset_search.py moving-shapes-wan
    python benchmarks/preset_search.py moving-shapes
"""

from __future__ import annotations

import sys

import torch

from cachekit import bench, evaluate, zoo


def lite(**settings: object) -> dict:
    return {"policy": [{"type": "taylorseer", "lite": True, **settings}]}


GRID = [
    ("lite i2 order 2", lite(interval=2, order=2)),
    ("lite i2 order 2 end 0.9 (quality)", lite(interval=2, order=2, window={"end": 0.9})),
    ("lite i3 order 2", lite(interval=3, order=2)),
    ("lite i3 order 2 end 0.9", lite(interval=3, order=2, window={"end": 0.9})),
    ("lite i3 order 2 warmup 2 end 0.9 (fast)", lite(interval=3, order=2, warmup=2, window={"end": 0.9})),
    ("lite i3 order 2 end 28", lite(interval=3, order=2, end=28)),
    ("lite i3 warmup 4", lite(interval=3, warmup=4)),
    ("lite i4 order 2 end 0.9", lite(interval=4, order=2, window={"end": 0.9})),
    ("taylorseer on the stack i3", {"policy": [{"type": "taylorseer", "interval": 3, "sites": {"kinds": ["stack"]}}]}),
    ("seacache 0.5 max_consecutive_cached 3", {"policy": [{"type": "seacache", "threshold": 0.5, "max_consecutive_cached": 3}]}),
]


def main(model: str) -> None:
    torch.set_num_threads(1)
    job = evaluate.zoo_job(model, 30, zoo.GUIDANCE[model])
    job.pipe.set_progress_bar_config(disable=True)
    rows = bench.run_bench(job, 30, [0, 1], 0, peers=False, grid=GRID, progress=lambda line: None)
    print(f"{model}: 16 prompts x seeds 0, 1, 30 steps\n\n| row | compute fraction | PSNR dB |\n|---|---|---|")
    for row in rows[1:]:
        print(f"| {row['name']} | {row['compute_fraction']:.3f} | {row['psnr']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "moving-shapes-wan")
