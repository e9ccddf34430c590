"""A bare transformer in a hand-written loop: a loop that does not follow the steps declared to enable
is told what to pass, and the same loop run twice gives the same output."""

import warnings

import pytest
import torch
from diffusers import DDIMScheduler

import cachekit
from cachekit import EnableError
from cachekit.demo import tiny_latte_pipeline

torch.set_num_threads(1)

REUSE = {"policy": [{"type": "reuse", "interval": 2, "sites": {"kinds": ["attn", "mlp"]}, "window": {"start": 0.0, "end": 1.0}}]}


def loop(model, steps: int) -> torch.Tensor:
    """A CFG loop written by hand: [uncond, cond] batched in each call, DDIM steps."""
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 4, 8, 8, generator=generator)
    prompt = torch.randn(1, 6, 32, generator=generator)
    context = torch.cat([torch.zeros_like(prompt), prompt])
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = model(torch.cat([x, x]), timestep=t.expand(2), encoder_hidden_states=context, return_dict=False)[0]
            uncond, cond = out[:, :4].chunk(2)
            x = scheduler.step(uncond + 4.0 * (cond - uncond), t, x).prev_sample
    return x


def enabled_model(steps: int):
    model = tiny_latte_pipeline().transformer
    return model, cachekit.enable(model, REUSE, num_inference_steps=steps, cfg=True)


def test_a_loop_shorter_than_declared_is_told_and_runs_alike_twice():
    model, session = enabled_model(30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = loop(model, 20)  # nothing tells yet that the loop ended short
    with pytest.raises(EnableError, match="the current run has made 20 of its 30 steps.*pass the loop's step count"):
        session.report()
    with pytest.warns(UserWarning, match="a hand-written loop started again after 20 of the 30 steps enable declared; "
                                         "the run starts afresh: pass the loop's step count as num_inference_steps"):
        second = loop(model, 20)
    assert torch.equal(first, second)
    assert torch.equal(loop(model, 20), first)


def test_a_loop_longer_than_declared_is_told():
    model, session = enabled_model(20)
    with pytest.warns(UserWarning, match="the hand-written loop goes on past the 20 steps enable declared"):
        first = loop(model, 30)
    assert torch.equal(loop(model, 30), first)


def test_a_loop_with_the_declared_steps_is_cached_alike_each_time():
    model, session = enabled_model(20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = loop(model, 20)
        assert session.report().counts()["reuse"] > 0
        assert torch.equal(loop(model, 20), first)
