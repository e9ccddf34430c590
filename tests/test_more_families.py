"""Sana-WM, Wan Animate and Cosmos 3 Omni on the real diffusers pipelines built from tiny random
components (``tests/pipelines_more.py``), with CFG and the ``fastercache`` preset, through
``cachekit.testing.check_adapter``; Wan Animate's segments, one denoising loop each, run by run;
Cosmos 3's packed, unbatched sequences."""

import warnings

import pytest
import torch

import cachekit
from cachekit.policy import COMPUTE, ONLINE, SKIP
from cachekit.testing import check_adapter
from tests.pipelines import assert_one_branch_probe
from tests.pipelines_more import BUILDERS, CALLS, WAN_ANIMATE_SEGMENTS

torch.set_num_threads(1)

STEPS = 6
ADAPTERS = {"sana_wm": "sana_wm", "wan_animate": "wan_animate", "cosmos3": "cosmos3"}
#: The families whose pipeline batches the CFG branches along dim 0 (the rest call once per branch).
BATCHED = {"sana_wm"}
#: The families whose adapter has a block stack.
STACKED = {"sana_wm", "cosmos3"}
#: The families whose blocks have no cross-attention (text and video attend jointly).
JOINT_ONLY = {"cosmos3"}


def _animate(pipe):
    """The latents of one seeded Wan Animate call of ``STEPS`` steps per segment."""
    with torch.no_grad():
        return pipe(**CALLS["wan_animate"](pipe, STEPS)).frames


def test_every_family_has_a_call():
    assert set(BUILDERS) == set(CALLS) == set(ADAPTERS)


@pytest.mark.parametrize("family", list(BUILDERS))
def test_check_adapter_fastercache(family):
    """All-compute bitwise equal to uncached, executed = plan and finite under the preset and under a
    reuse of every site kind, the first block entered once per planned denoiser branch (so CFG-Cache
    skips the uncond branch), the call order, ``disable()`` bitwise; for Sana-WM's batched layout
    every site computes one branch beside a reused one, each way round, with the uncached call's rows
    (per-frame timesteps, the camera ray maps, Plucker embeddings and ray transforms cut with the
    batch, the rotary tables shared)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = check_adapter(BUILDERS[family], CALLS[family], steps=STEPS)
    assert result.adapter == ADAPTERS[family] and result.branches == ("uncond", "cond")
    assert result.first_block_measured == result.first_block_planned < result.first_block_uncached
    kinds = {"denoiser", "attn.joint", "mlp", "block"} | (set() if family in JOINT_ONLY else {"attn.cross"})
    assert kinds <= set(result.cached_nodes)
    assert ("stack" in result.cached_nodes) == (family in STACKED)
    assert "call order: the cond branch steers the run" in result.checked
    assert_one_branch_probe(result, BUILDERS[family], family in BATCHED)


def test_sana_wm_per_frame_timesteps_place_every_call_without_a_notice():
    """Sana-WM's timestep is per latent frame, 0 on the conditioning first frame: the run is followed
    by its calls, planned for the schedule's steps, with no cachekit notice; CFG-Cache rebuilds the
    uncond branch and attention reuse runs."""
    pipe = BUILDERS["sana_wm"]()
    session = cachekit.enable(pipe, "fastercache")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            out = pipe(**CALLS["sana_wm"](pipe, 10)).frames
    assert not [w for w in caught if str(w.message).startswith("cachekit")]
    report = session.report()
    cachekit.disable(pipe)
    assert report.num_steps == 10 and torch.isfinite(out).all()
    rebuilt = {(site, branch) for (_, site, branch), kind in report.executed.items() if kind != COMPUTE}
    assert ("denoiser", "uncond") in rebuilt and any(site.endswith("attn.joint") for site, _ in rebuilt)


def test_wan_animate_plans_and_reports_one_run_per_segment():
    """Wan Animate samples the video in segments, setting its timesteps again for each: every segment
    is a run of its own, planned for its steps, its first step computing everything it calls; the
    preset skips calls into the blocks; ``disable()`` restores the output bitwise."""
    pipe = BUILDERS["wan_animate"]()
    entered = []
    pipe.transformer.blocks[0].register_forward_pre_hook(lambda module, args: entered.append(1))
    reference = _animate(pipe)
    uncached = len(entered)
    assert uncached == WAN_ANIMATE_SEGMENTS * STEPS * 2

    session = cachekit.enable(pipe, "fastercache")
    entered.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _animate(pipe)
    assert not [w for w in caught if str(w.message).startswith("cachekit")]
    reports = session.reports()
    assert len(reports) == WAN_ANIMATE_SEGMENTS and reports[-1] is session.report()
    for report in reports:
        assert report.num_steps == STEPS and set(report.branches) == {"cond", "uncond"}
        assert all(kind == COMPUTE for (step, _, _), kind in report.executed.items() if step == 0)
        plan = session.plan_for(STEPS)
        planned = {node: action.kind for node, action in plan.nodes() if action.kind not in (SKIP, ONLINE)}
        assert {node: report.executed.get(node) for node in planned} == planned
    computed = sum(kind == COMPUTE for r in reports for (_, site, _), kind in r.executed.items() if site == "denoiser")
    assert len(entered) == computed < uncached and torch.isfinite(out).all()
    cachekit.disable(pipe)
    assert torch.equal(_animate(pipe), reference)


def test_wan_animate_face_cross_attentions_are_sites_and_reused_as_planned():
    """The face cross-attention the model adds after each block is a site (``blocks.i.attn.face``, a
    child of the denoiser); a reuse of those sites alone is executed as planned in every segment and
    changes the output."""
    pipe = BUILDERS["wan_animate"]()
    reference = _animate(pipe)
    adapter = cachekit.find_adapter(pipe.transformer, pipe)
    faces = [site for site in adapter.validate() if site.name.endswith("attn.face")]
    assert [(s.name, s.module_path, s.kind, s.parent) for s in faces] == [
        (f"blocks.{j}.attn.face", f"face_adapter.{j}", "attn.cross", "denoiser") for j in range(2)]
    config = {"policy": [{"type": "reuse", "interval": 2, "sites": {"names": ["blocks.*.attn.face"]},
                          "window": {"start": 0.3, "end": 1.0}}]}
    session = cachekit.enable(pipe, config)
    out = _animate(pipe)
    reports = session.reports()
    cachekit.disable(pipe)
    assert len(reports) == WAN_ANIMATE_SEGMENTS
    for report in reports:
        plan = session.plan_for(STEPS)
        planned = {node: action.kind for node, action in plan.nodes() if action.kind not in (SKIP, ONLINE)}
        assert {node: report.executed.get(node) for node in planned} == planned
        reused = {site for (_, site, _), kind in report.executed.items() if kind != COMPUTE}
        assert reused == {site.name for site in faces}
    assert torch.isfinite(out).all() and not torch.equal(out, reference)


def test_wan_animate_example_call_runs_the_model():
    """The adapter's example inputs (for a dry run's prediction) fit the model: pose latents one frame
    shorter than the latents, a face video of the segment's pixel frames."""
    pipe = BUILDERS["wan_animate"]()
    adapter = cachekit.find_adapter(pipe.transformer, pipe)
    adapter.example_latent, adapter.example_text_tokens = (3, 4, 4), 8
    args, kwargs = adapter.example_call(2)
    assert kwargs["pose_hidden_states"].shape == (2, 4, 2, 4, 4) and kwargs["face_pixel_values"].shape == (2, 3, 5, 16, 16)
    with torch.no_grad():
        out = pipe.transformer(*args, **kwargs)[0]
    assert out.shape == (2, 4, 3, 4, 4) and torch.isfinite(out).all()


def test_cosmos3_packed_sequences_cache_per_branch_and_rebuild_uncond():
    """Cosmos 3's calls are unbatched packed sequences whose text part differs between cond (longer
    prompt) and uncond: the clock places every call by its per-token ``vision_timesteps``, the
    latents are read from ``vision_tokens``, caching stays on for the whole run (no shape-change
    notice), each decoder layer is a residual site over both streams, CFG-Cache rebuilds uncond from
    the per-item prediction ``(1, C, F, H, W)``, and ``disable()`` restores bitwise."""
    pipe = BUILDERS["cosmos3"]()
    with torch.no_grad():
        reference = pipe(**CALLS["cosmos3"](pipe, 10)).video
    session = cachekit.enable(pipe, "fastercache")
    layer = {site.name: site for site in session.adapter.sites()}["blocks.1"]
    assert layer.module_path == "layers.1" and layer.residual
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            out = pipe(**CALLS["cosmos3"](pipe, 10)).video
    assert not [w for w in caught if str(w.message).startswith("cachekit")]
    report = session.report()
    cachekit.disable(pipe)
    assert report.num_steps == 10 and report.branches == ("uncond", "cond")
    rebuilt = {(site, branch) for (_, site, branch), kind in report.executed.items() if kind != COMPUTE}
    assert ("denoiser", "uncond") in rebuilt and any(site.endswith("attn.joint") for site, _ in rebuilt)
    assert torch.isfinite(out).all() and not torch.equal(out, reference)
    with torch.no_grad():
        assert torch.equal(pipe(**CALLS["cosmos3"](pipe, 10)).video, reference)


@pytest.mark.parametrize("family", ["minimax_h3", "sana_wm_refiner"])
def test_check_adapter_without_guidance(family):
    """MiniMax-H3 (guidance-distilled, one packed video, audio and text sequence a call) and SANA-WM's
    refiner (no guidance; one loop per chunk, the key/value captures between them no steps) under
    the ``quality`` preset: executed = plan, the first block entered once per planned compute,
    a reuse of every site kind, ``disable()`` bitwise."""
    from tests.pipelines_minimax_sana import BUILDERS as NO_CFG, CALLS as NO_CFG_CALLS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = check_adapter(NO_CFG[family], NO_CFG_CALLS[family], steps=STEPS, config="quality")
    assert result.adapter == family and result.branches == ("cond",)
    assert result.first_block_measured == result.first_block_planned < result.first_block_uncached
    assert {"denoiser", "attn.joint", "mlp", "block", "stack"} <= set(result.cached_nodes)


def test_sana_wm_refiner_runs_a_loop_per_chunk_and_leaves_the_captures_out():
    """Three chunks, each a run of its own planned for its steps; the four key/value capture calls
    (the sink's, then one after each chunk) compute plainly."""
    from tests.pipelines_minimax_sana import BUILDERS as NO_CFG, CALLS as NO_CFG_CALLS

    pipe = NO_CFG["sana_wm_refiner"]()
    modes = []
    pipe.transformer.register_forward_pre_hook(lambda module, args, kwargs: modes.append(kwargs.get("kv_cache_mode")),
                                               with_kwargs=True)
    session = cachekit.enable(pipe, "quality")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = pipe(**NO_CFG_CALLS["sana_wm_refiner"](pipe, STEPS))
    cachekit.disable(pipe)
    assert modes.count("inject") == 3 * STEPS and len(modes) == 3 * STEPS + 4
    assert [report.num_steps for report in session.reports()] == [STEPS] * 3 and torch.isfinite(out).all()
