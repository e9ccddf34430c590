"""cachekit under diffusers' context parallelism, for real: 2 processes (gloo, CPU), Ulysses on a tiny
Wan pipeline, cachekit enabled before or after ``enable_parallelism``."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.context_parallel import cached_run

ROOT = Path(__file__).resolve().parents[1]
FIRST_BLOCK = {"policy": [{"type": "first_block", "threshold": 0.1}]}
TEACACHE = {"policy": [{"type": "teacache", "rel_l1_thresh": 0.3}]}
#: Static presets (attention sites, the denoiser) and online policies on the block stack (a residual
#: site whose first block's input diffusers splits), in both orders of enabling.
CASES = [("fastercache", "after"), ("quality", "before"), (FIRST_BLOCK, "before"), (FIRST_BLOCK, "after"),
         (TEACACHE, "after")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out, port = tmp_path_factory.mktemp("cp") / "run", free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.context_parallel", str(rank), "2", str(port), str(out),
                               json.dumps(CASES)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in range(2)]
    logs = [proc.communicate(timeout=600)[0] for proc in procs]
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-3000:]
    return [torch.load(f"{out}.rank{rank}") for rank in range(2)]


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{c if isinstance(c, str) else c['policy'][0]['type']}-{o}"
                                                        for c, o in CASES])
def test_every_rank_decides_alike_and_equals_one_process(ranks, case):
    config, _ = CASES[case]
    single = cached_run(config)
    first, second = ranks[0][case], ranks[1][case]
    assert first["decisions"] == second["decisions"] == single["decisions"]
    assert any(kind != "compute" for *_, kind in single["decisions"])  # it cached
    assert torch.equal(first["frames"], single["frames"]) and torch.equal(second["frames"], single["frames"])
    # each rank holds its own shard of the cached sequence tensors, never more than one process
    assert 0 < first["peak_bytes"] == second["peak_bytes"] <= single["peak_bytes"]
