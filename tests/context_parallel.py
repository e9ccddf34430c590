"""One rank of a context-parallel run (gloo, CPU; Ulysses over the ranks) of a tiny Wan pipeline with
cachekit, for each case given.

``python -m tests.context_parallel RANK WORLD PORT OUT CASES``: CASES is a JSON list of
``[config, order]``; ``order`` "before" enables cachekit before ``enable_parallelism``, "after"
after it. Each rank saves, per case, the output latents, the run's decisions and its peak cache
bytes to ``OUT.rankN`` (a torch file).
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

import torch
import torch.distributed as dist

import cachekit
from tests.pipelines import tiny_wan_pipeline, wan_call

STEPS = 8


def decisions(session: cachekit.Session) -> list[tuple[int, str, str, str]]:
    return sorted((step, site, branch, kind) for (step, site, branch), kind in session.runtime.last_run.executed().items())


def cached_run(config: Any, parallel: Any = None, order: str = "after") -> dict[str, Any]:
    """A cached run of the tiny Wan pipeline: its latents, decisions and peak cache bytes; with
    ``parallel`` (a diffusers ContextParallelConfig), under context parallelism enabled ``order``
    relative to cachekit."""
    pipe = tiny_wan_pipeline()
    if parallel is not None and order == "after":
        pipe.transformer.enable_parallelism(config=parallel)
    session = cachekit.enable(pipe, config)
    if parallel is not None and order == "before":
        pipe.transformer.enable_parallelism(config=parallel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = pipe(**wan_call(pipe, STEPS)).frames
    return {"frames": frames, "decisions": decisions(session), "peak_bytes": session.report().measured_peak_cache_bytes}


def main(rank: int, world: int, port: int, out: str, cases: list[tuple[Any, str]]) -> None:
    from diffusers import ContextParallelConfig

    torch.set_num_threads(1)
    torch.accelerator.device_count = lambda: 1  # a CPU-only build counts 0 devices; diffusers takes rank % count
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        parallel = ContextParallelConfig(ulysses_degree=world)
        torch.save([cached_run(config, parallel, order) for config, order in cases], f"{out}.rank{rank}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*(int(v) for v in sys.argv[1:4]), sys.argv[4], json.loads(sys.argv[5]))
