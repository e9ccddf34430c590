"""The Cosmos 1.0 and 2.5 pipelines on tiny random components (``tests/pipelines_cosmos_more.py``),
through ``cachekit.testing.check_adapter`` with the ``cosmos`` adapter: split CFG, cond first, no
``cache_context``; EDM schedules (Cosmos 1.0) and per-frame timesteps off the schedule (2.5, whose
calls the clock counts); Cosmos-Transfer 2.5 with its ControlNet beside the transformer. And
SkyReels-V2's asynchronous diffusion forcing, whose loop walks a timestep matrix."""

import warnings

import pytest
import torch

from cachekit.testing import check_adapter
from tests.pipelines_cosmos_more import BUILDERS, CALLS

torch.set_num_threads(1)

COSMOS = [family for family in BUILDERS if family.startswith("cosmos")]


@pytest.mark.parametrize("family", COSMOS)
def test_check_adapter_fastercache(family):
    """All-compute bitwise equal to uncached, executed = plan and finite under the preset and a reuse
    of every site kind, the first block entered once per planned branch (CFG-Cache skips the uncond
    call), the call order, ``disable()`` bitwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = check_adapter(BUILDERS[family], CALLS[family], steps=6)
    assert result.adapter == "cosmos" and result.branches == ("uncond", "cond")
    assert result.first_block_measured == result.first_block_planned < result.first_block_uncached
    assert {"denoiser", "attn.joint", "attn.cross", "mlp", "block", "stack"} <= set(result.cached_nodes)
    assert "call order: the cond branch steers the run" in result.checked


def test_skyreels_v2_asynchronous_diffusion_forcing_is_one_run_of_its_matrix_rows():
    """``ar_step=2`` with two causal blocks walks a timestep matrix of 6 + 2 rows (the second block
    lagging): one run of 8 steps, its calls counted (frame 0 leaves the schedule for its last two
    rows), through ``check_adapter``."""
    import cachekit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = check_adapter(BUILDERS["skyreels_v2_async"], CALLS["skyreels_v2_async"], steps=6)
        pipe = BUILDERS["skyreels_v2_async"]()
        session = cachekit.enable(pipe, "fastercache")
        with torch.no_grad():
            pipe(**CALLS["skyreels_v2_async"](pipe, 6))
        cachekit.disable(pipe)
    assert result.adapter == "skyreels_v2" and result.first_block_measured == result.first_block_planned < 16
    assert [(report.num_steps, report.branches) for report in session.reports()] == [(8, ("uncond", "cond"))]
