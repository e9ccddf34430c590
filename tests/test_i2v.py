"""The image-to-video and video-to-video pipelines of the covered families on real tiny pipelines
(``tests/pipelines_i2v.py``), with CFG and the ``fastercache`` preset, through
``cachekit.testing.check_adapter``; EasyAnimate's control model, whose pipeline cannot be called in
diffusers 0.42.1, in a hand-written loop."""

import warnings

import pytest
import torch

import cachekit
from cachekit.errors import AdapterError
from cachekit.testing import check_adapter
from tests.pipelines import assert_one_branch_probe
from tests.pipelines_i2v import BUILDERS, CALLS, _masked_text, tiny_easyanimate_control_pipeline

torch.set_num_threads(1)

STEPS = 8
ADAPTERS = {"wan_i2v": "wan", "wan_ti2v": "wan", "wan_v2v": "wan", "cogvideox_i2v": "cogvideox",
            "cogvideox_v2v": "cogvideox", "cogvideox_fun_control": "cogvideox", "ltx_i2v": "ltx",
            "ltx_condition": "ltx", "skyreels_v2_i2v": "skyreels_v2", "sana_i2v": "sana_video",
            "easyanimate_inpaint": "easyanimate", "hunyuan_video_i2v": "hunyuan_video",
            "hunyuan_video_i2v_token_replace": "hunyuan_video", "hunyuan_skyreels_i2v": "hunyuan_video",
            "kandinsky5_i2v": "kandinsky5", "skyreels_v2_df": "skyreels_v2", "skyreels_v2_df_i2v": "skyreels_v2",
            "skyreels_v2_df_v2v": "skyreels_v2", "hunyuan_video15_i2v": "hunyuan_video15",
            "motif_video_i2v": "motif_video"}
#: The families whose pipeline batches the CFG branches along dim 0 (the rest call once per branch).
BATCHED = {"cogvideox_i2v", "cogvideox_v2v", "cogvideox_fun_control", "ltx_i2v", "ltx_condition", "sana_i2v",
           "easyanimate_inpaint"}


def test_every_family_has_a_call():
    assert set(BUILDERS) == set(CALLS) == set(ADAPTERS)


@pytest.mark.parametrize("family", list(BUILDERS))
def test_check_adapter_fastercache(family):
    """All-compute bitwise equal to uncached, executed = plan and finite under the preset and under a
    reuse of every site kind, the first block entered once per planned denoiser branch (so CFG-Cache
    skips the uncond branch), the block stack, the call order, ``sigmas=`` / ``timesteps=`` calls
    where the pipeline takes them, ``disable()`` bitwise; for a batched layout every site computes
    one branch beside a reused one, each way round, with the uncached call's rows (image latents in
    the channels, per-token timesteps and coordinates, conditioning latents cut with the batch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pipelines' own notes on tiny inputs
        result = check_adapter(BUILDERS[family], CALLS[family], steps=STEPS)
    assert result.adapter == ADAPTERS[family] and result.branches == ("uncond", "cond")
    assert result.first_block_measured == result.first_block_planned < result.first_block_uncached
    assert {"denoiser", "attn.joint", "mlp", "block", "stack"} <= set(result.cached_nodes)
    assert "call order: the cond branch steers the run" in result.checked
    assert "block stack skipped on its own inputs" in result.checked
    assert_one_branch_probe(result, BUILDERS[family], family in BATCHED)


def test_strength_runs_plan_the_steps_they_make():
    """A video-to-video call at strength 0.8 of 10 steps starts mid-schedule and makes 8: the plan
    has 8 steps and the run ends as planned."""
    pipe = BUILDERS["wan_v2v"]()
    session = cachekit.enable(pipe, "fastercache")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe(**CALLS["wan_v2v"](pipe, 10))
    report = session.report()
    cachekit.disable(pipe)
    assert session.plan.num_steps == 8
    assert report.executed == {node: a.kind for node, a in session.plan.nodes() if a.kind != "skip"}


def _ltx_grids(pipe, **overrides):
    """The frame grid the LTX adapter reads from the first transformer call of an LTXConditionPipeline call."""
    adapter = cachekit.find_adapter(pipe.transformer)
    captured = []
    handle = pipe.transformer.register_forward_pre_hook(lambda m, a, k: captured.append(k) if not captured else None,
                                                        with_kwargs=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe(**{**CALLS["ltx_condition"](pipe, 2), **overrides})
    finally:
        handle.remove()
    return adapter, captured[0]


def test_ltx_condition_grid_from_video_coords():
    """LTXConditionPipeline passes per-token coordinates instead of the grid: the adapter reads the
    (frames, height, width) grid from them; with conditioning tokens prepended (a condition at a
    frame index other than 0) the tokens lie on no grid, and a frequency kernel is told so."""
    pipe = BUILDERS["ltx_condition"]()
    adapter, kwargs = _ltx_grids(pipe)
    assert "num_frames" not in kwargs and adapter.frame_grid((), kwargs) == (3, 8, 8)
    adapter, kwargs = _ltx_grids(pipe, frame_index=4)
    with pytest.raises(AdapterError, match="lie on no frame grid"):
        adapter.frame_grid((), kwargs)


def _control_loop(model, steps: int) -> torch.Tensor:
    """EasyAnimateControlPipeline's denoising loop, by hand: batched [uncond, cond], the control
    latents (control video's and reference image's, 4 + 4 channels) beside the noise, flow-matching
    Euler steps."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 3, 8, 8, generator=generator)
    control = torch.randn(1, 8, 3, 8, 8, generator=generator)
    text = _masked_text(0)
    context = torch.cat([text["negative_prompt_embeds"], text["prompt_embeds"]])
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = model(torch.cat([x, x]), t.expand(2), encoder_hidden_states=context,
                        control_latents=torch.cat([control, control]), return_dict=False)[0]
            uncond, cond = out.chunk(2)
            x = scheduler.step(uncond + 5.0 * (cond - uncond), t, x).prev_sample
    return x


def test_easyanimate_control_in_a_handwritten_loop():
    """EasyAnimateControlPipeline cannot be called in diffusers 0.42.1 (its __call__ passes
    ``text_encoder_index`` to an encode_prompt that does not take it), so its transformer runs in a
    hand-written loop: executed = plan and finite under the preset, something reused or rebuilt,
    and disable() restores the uncached output bitwise."""
    model = tiny_easyanimate_control_pipeline().transformer
    reference = _control_loop(model, STEPS)
    session = cachekit.enable(model, "fastercache", num_inference_steps=STEPS, cfg=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = _control_loop(model, STEPS)
    report = session.report()
    cachekit.disable(model)
    assert report.executed == {node: a.kind for node, a in session.plan.nodes() if a.kind != "skip"}
    assert torch.isfinite(out).all() and set(report.counts()) - {"compute"}
    assert torch.equal(_control_loop(model, STEPS), reference)


@pytest.mark.parametrize("family", ["hunyuan_video15_i2v", "motif_video_i2v"])
def test_guider_image_to_video_pipelines_pass_the_image(family):
    """The two guider pipelines condition each call on the image: its latents in the first latent frame
    of channels 4-8 (zeros after it), a mask of ones on that frame, and SigLIP image tokens (nonzero:
    HunyuanVideo 1.5 takes all-zero image tokens for text-to-video), the same for cond and uncond."""
    pipe = BUILDERS[family]()
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe(**CALLS[family](pipe, 1))
    assert len(calls) == 2  # one step: cond, then uncond
    for kwargs in calls:
        hidden, image = kwargs["hidden_states"], kwargs["image_embeds"]
        assert hidden.shape[1] == 9 and hidden[:, 4:8, 0].abs().sum() > 0 and not hidden[:, 4:8, 1:].any()
        assert torch.equal(hidden[:, 8, 0], torch.ones_like(hidden[:, 8, 0])) and not hidden[:, 8, 1:].any()
        assert image.shape[-1] == 16 and image.abs().sum() > 0
    assert torch.equal(calls[0]["image_embeds"], calls[1]["image_embeds"])
    assert not torch.equal(calls[0]["encoder_hidden_states"], calls[1]["encoder_hidden_states"])
