"""Models whose attention runs on diffusers' ``flex`` backend (block-sparse masks), on the real
diffusers pipelines built from tiny random components (``tests/pipelines_flex.py``), through
``cachekit.testing.check_adapter``: their FLOPs, flex attention included, are counted in each run's
first call; Kandinsky 6 SR runs one loop per tile, AnyFlow-FAR one per chunk over a key/value cache
that carries the CFG branches along dim 1."""

import warnings

import pytest
import torch

import cachekit
from cachekit.adapters.anyflow import AnyFlowFARAdapter
from cachekit.cost import measure_sites
from cachekit.policy import COMPUTE
from cachekit.testing import check_adapter
from tests.pipelines import assert_one_branch_probe
from tests.pipelines_flex import BUILDERS, CALLS, FAR_CHUNKS, KANDINSKY6_SR_TILES

torch.set_num_threads(1)

STEPS = 6

pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")


def _frames(pipe, family: str) -> torch.Tensor:
    """The output of one seeded ``STEPS``-step call of ``family``'s pipeline (diffusers' warnings silenced)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pipe(**CALLS[family](pipe, STEPS)).frames


def test_kandinsky6_sr_check_adapter_fastercache():
    """No CFG: one branch; all-compute bitwise equal to uncached, executed = plan and finite under
    the preset and a reuse of every site kind (blocks, the stack), ``sigmas=`` / ``timesteps=``
    calls, ``disable()`` bitwise, the first block entered once per planned compute."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = check_adapter(BUILDERS["kandinsky6_sr"], CALLS["kandinsky6_sr"], steps=STEPS)
    assert result.adapter == "kandinsky6_sr" and result.branches == ("cond",)
    assert {"denoiser", "attn.joint", "mlp", "block", "stack"} <= set(result.cached_nodes)
    assert result.first_block_measured == result.first_block_planned
    assert "call with sigmas=: executed = plan" in result.checked


def test_kandinsky6_sr_counts_flex_attention_in_the_first_call():
    """An attention site's counted FLOPs hold its flex attention (Q K^T and P V over every token
    pair: the tiny model's NABLA mask keeps every block) besides its four projections."""
    pipe = BUILDERS["kandinsky6_sr"]()
    adapter = cachekit.find_adapter(pipe.transformer, pipe)
    sites = adapter.validate()
    hidden = torch.randn(1, 3, 8, 8, 9)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, flops, _ = measure_sites(adapter, sites, lambda: pipe.transformer(hidden_states=hidden,
                                                                              timestep=torch.tensor([500.0])), 1)
    tokens, width, heads = 3 * 8 * 8, 32, 2
    projections = 4 * 2 * tokens * width * width
    attention = 2 * heads * tokens * tokens * 2 * (width // heads)
    assert projections + attention <= flops["blocks.0.attn.joint"] < 1.1 * (projections + attention)


def test_kandinsky6_sr_plans_and_reports_one_run_per_tile():
    """Each tile is denoised in a loop of its own: a run each, planned for its steps, its first step
    computed; the runs are predicted from counted FLOPs; ``disable()`` restores bitwise."""
    pipe = BUILDERS["kandinsky6_sr"]()
    reference = _frames(pipe, "kandinsky6_sr")
    session = cachekit.enable(pipe, "fast")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _frames(pipe, "kandinsky6_sr")
    assert not [w for w in caught if str(w.message).startswith("cachekit")]
    reports = session.reports()
    assert len(reports) == KANDINSKY6_SR_TILES
    for report in reports:
        assert report.num_steps == STEPS and report.branches == ("cond",)
        assert all(kind == COMPUTE for (step, _, _), kind in report.executed.items() if step == 0)
        assert report.prediction_basis == "flops" and report.predicted_speedup > 1
    cachekit.disable(pipe)
    assert torch.isfinite(out).all() and not torch.equal(out, reference)
    assert torch.equal(_frames(pipe, "kandinsky6_sr"), reference)


def test_anyflow_far_check_adapter_fastercache():
    """Batched CFG over both chunks: all-compute bitwise, executed = plan, the first block entered
    once per planned branch evaluation (the prefill calls between chunks computing plainly), every
    site computing one branch beside a reused one with the uncached call's rows (the key/value cache
    cut along dim 1), ``sigmas=`` / ``timesteps=`` calls, ``disable()`` bitwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = check_adapter(BUILDERS["anyflow_far"], CALLS["anyflow_far"], steps=STEPS)
    assert result.adapter == "anyflow_far" and result.branches == ("uncond", "cond")
    assert result.first_block_uncached == len(FAR_CHUNKS) * STEPS * 2
    assert result.first_block_measured == result.first_block_planned < result.first_block_uncached
    assert {"denoiser", "attn.joint", "attn.cross", "mlp", "block", "stack"} <= set(result.cached_nodes)
    assert "call order: the cond branch steers the run" in result.checked
    assert_one_branch_probe(result, BUILDERS["anyflow_far"], True)


class _CacheAlongDim0(AnyFlowFARAdapter):
    batch_axes = None


def test_anyflow_far_key_value_cache_must_be_cut_along_dim_1():
    """Without the declaration the cache, whose dim 0 (keys, values) equals the batch of 2, is cut
    along dim 0: the one-branch probe fails on the self-attention that reads it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = check_adapter(BUILDERS["anyflow_far"], CALLS["anyflow_far"], steps=STEPS, adapter=_CacheAlongDim0,
                               raise_on_failure=False)
    failed = [f for f in result.failures if f.startswith("one-branch calls")]
    assert failed and any("attn.joint" in f for f in failed)


def test_anyflow_far_plans_and_reports_one_run_per_chunk():
    """Each chunk is a run of its own, planned for its steps, its first step computed; CFG-Cache
    rebuilds the uncond branch; the prefill call between chunks is no step of a run and computes
    plainly; ``disable()`` restores bitwise."""
    pipe = BUILDERS["anyflow_far"]()
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    reference = _frames(pipe, "anyflow_far")
    assert len(calls) == len(FAR_CHUNKS) * STEPS + len(FAR_CHUNKS) - 1  # the steps and the prefills
    session = cachekit.enable(pipe, "fastercache")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _frames(pipe, "anyflow_far")
    assert not [w for w in caught if str(w.message).startswith("cachekit")]
    reports = session.reports()
    assert len(reports) == len(FAR_CHUNKS)
    for report in reports:
        assert report.num_steps == STEPS and report.branches == ("uncond", "cond")
        assert all(kind == COMPUTE for (step, _, _), kind in report.executed.items() if step == 0)
        assert report.executed.get((STEPS - 2, "denoiser", "uncond")) != COMPUTE
    cachekit.disable(pipe)
    assert torch.isfinite(out).all() and not torch.equal(out, reference)
    assert torch.equal(_frames(pipe, "anyflow_far"), reference)
