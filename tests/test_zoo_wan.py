"""The second embedded model, ``moving-shapes-wan``: a trained WanTransformer3DModel in a WanPipeline
(rectified flow, Euler steps, split CFG), loaded offline from the package."""

import pytest
import torch

import cachekit
from cachekit import zoo
from cachekit.cli import main
from cachekit.zoo import moving_shapes as world
from cachekit.zoo import weights

NAME = "moving-shapes-wan"


def test_it_loads_as_a_wan_pipeline_from_the_package():
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    pipe = zoo.load(NAME)
    assert type(pipe) is WanPipeline and type(pipe.transformer) is WanTransformer3DModel
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    path = weights.weights_path(NAME)
    assert path.stat().st_size <= 20 * 2**20 and weights.info(path)["training_steps"] > 0


@pytest.fixture(scope="module")
def samples():
    """Every trained prompt at seed 0, 30 steps, the model's guidance."""
    pipe = zoo.load(NAME)
    prompts = world.prompts()
    kwargs = weights.call_kwargs(prompts, steps=30, seed=0, guidance_scale=zoo.GUIDANCE[NAME], path=weights.weights_path(NAME))
    return pipe(**kwargs).frames, prompts


def test_the_wan_model_learned_colour_a_crisp_object_and_its_motion(samples):
    """The shipped model draws the prompted colour, a crisp square, moving steadily in the prompted
    direction (seed 0: all four at 100%; docs/moving-shapes.md)."""
    rates = world.rates(*samples)
    assert rates["colour"] >= 0.9 and rates["crisp"] >= 0.9, rates
    assert rates["coherent"] >= 0.8 and rates["direction"] >= 0.8, rates


def test_it_runs_split_cfg_with_cond_first_and_its_stack_is_cached():
    """The pipeline calls the transformer for "cond" then "uncond": first_block decides per branch
    and skips the block stack at some steps; the report says so."""
    pipe = zoo.load(NAME)
    session = cachekit.enable(pipe, {"policy": [{"type": "first_block", "threshold": 0.3}]})
    kwargs = weights.call_kwargs(world.prompts()[:2], steps=12, seed=0, guidance_scale=2.0, path=weights.weights_path(NAME))
    out = pipe(**kwargs).frames
    report = session.report()
    cachekit.disable(pipe)
    assert set(report.branches) == {"cond", "uncond"}
    assert 0 < sum(1 for (_, site, _), kind in report.executed.items() if site == "stack" and kind == "reuse")
    uncached = pipe(**weights.call_kwargs(world.prompts()[:2], steps=12, seed=0, guidance_scale=2.0,
                                          path=weights.weights_path(NAME))).frames
    assert not torch.equal(out, uncached) and (out - uncached).abs().mean() < 0.1  # cached, and close


def test_cachekit_run_takes_the_wan_model(tmp_path, capsys):
    assert main(["run", "--model", NAME, "--steps", "4", "--repeats", "1", "--quiet", "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "report.json").exists() and "PSNR" in capsys.readouterr().out
