"""The run clock alters nothing: with a plan that computes everything, every scheduler and every way of
passing a schedule gives outputs bitwise equal to uncached; strength < 1 plans only the steps that
run; a swapped or shared scheduler and a shared transformer are followed independently."""

import inspect
import warnings

import pytest
import torch
from diffusers import (
    CogVideoXDPMScheduler,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

import cachekit
from cachekit.demo import demo_call, tiny_latte_pipeline
from tests.pipelines import cogvideox_call, tiny_cogvideox_pipeline, tiny_wan_pipeline, wan_call

torch.set_num_threads(1)

#: Hooks every attention site and computes every node (interval 1): caching changes nothing.
ALL_COMPUTE = {"policy": [{"type": "reuse", "interval": 1, "sites": {"kinds": ["attn"]}}]}
#: Reuses attention outputs at every other step of the whole run.
REUSE = {"policy": [{"type": "reuse", "interval": 2, "sites": {"kinds": ["attn"]}, "window": {"start": 0.0, "end": 1.0}}]}


def quiet(pipe, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pipe(**kwargs).frames


def cached_equals_uncached(pipe, kwargs_of):
    """Run uncached, then cached with the all-compute plan; return the session."""
    reference = quiet(pipe, **kwargs_of(pipe))
    signatures = {name: inspect.signature(getattr(pipe.scheduler, name)) for name in ("step", "set_timesteps")}
    session = cachekit.enable(pipe, ALL_COMPUTE)
    assert {name: inspect.signature(getattr(pipe.scheduler, name)) for name in signatures} == signatures
    cached = quiet(pipe, **kwargs_of(pipe))
    assert torch.equal(cached, reference)
    assert session.report().counts() == {"compute": session.plan.graph.number_of_nodes() - session.plan.counts()["skip"]}
    assert {name: inspect.signature(getattr(pipe.scheduler, name)) for name in signatures} == signatures
    assert not any(name in pipe.scheduler.__dict__ for name in signatures)  # nothing set on the instance
    cachekit.disable(pipe)
    return session


def latte_with(scheduler_cls, **config):
    pipe = tiny_latte_pipeline()
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config, **config)
    return pipe


def test_ddim_eta_one_with_generator_is_bitwise_uncached():
    session = cached_equals_uncached(tiny_latte_pipeline(), lambda p: {**demo_call(p, steps=6), "eta": 1.0})
    assert session.report().num_steps == 6


@pytest.mark.parametrize("scheduler_cls", [DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler])
def test_latte_schedulers_are_bitwise_uncached(scheduler_cls):
    cached_equals_uncached(latte_with(scheduler_cls), lambda p: demo_call(p, steps=6))


def test_explicit_timesteps_are_bitwise_uncached():
    pipe = latte_with(EulerDiscreteScheduler)
    session = cached_equals_uncached(pipe, lambda p: {**demo_call(p, steps=4), "timesteps": [900, 700, 400, 100]})
    assert session.plan.timesteps == (900, 700, 400, 100)


def test_cogvideox_dpm_scheduler_is_bitwise_uncached():
    pipe = tiny_cogvideox_pipeline()
    pipe.scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
    cached_equals_uncached(pipe, lambda p: {**cogvideox_call(p, 5), "eta": 1.0})


def test_wan_flow_match_euler_is_bitwise_uncached():
    session = cached_equals_uncached(tiny_wan_pipeline(), lambda p: wan_call(p, 5))
    report = session.report()
    assert report.branches == ("uncond", "cond") and report.num_steps == 5


def tiny_wan_video2video():
    from diffusers import WanVideoToVideoPipeline

    base = tiny_wan_pipeline()
    pipe = WanVideoToVideoPipeline(**{k: base.components[k] for k in ("tokenizer", "text_encoder", "vae", "transformer", "scheduler")})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def video2video_call(pipe, steps, strength):
    call = wan_call(pipe, steps)
    frames = call.pop("num_frames")
    video = torch.rand(1, frames, 3, call["height"], call["width"], generator=torch.Generator().manual_seed(3))
    del call["latents"]
    return {**call, "video": video, "strength": strength}


def test_strength_below_one_plans_only_the_steps_that_run():
    pipe = tiny_wan_video2video()
    session = cached_equals_uncached(pipe, lambda p: video2video_call(p, 10, 0.5))
    report = session.report()
    assert report.num_steps == session.plan.num_steps == 5
    assert len(session.plan.timesteps) == 5 and session.plan.timesteps[0] < 1000


def test_strength_below_one_windows_are_fractions_of_the_run():
    pipe = tiny_wan_video2video()
    session = cachekit.enable(pipe, {"policy": [{"type": "reuse", "interval": 2, "sites": {"kinds": ["attn"]},
                                                 "window": {"start": 0.5, "end": 1.0}}]})
    quiet(pipe, **video2video_call(pipe, 12, 0.5))
    report = session.report()
    assert report.num_steps == 6
    reused = sorted({step for (step, _, _), kind in report.executed.items() if kind == "reuse"})
    assert reused == [4]  # window steps 3, 4, 5 of the 6 that run: compute, reuse, compute


def test_swapped_scheduler_is_followed():
    pipe = tiny_latte_pipeline()
    session = cachekit.enable(pipe, REUSE)
    quiet(pipe, **demo_call(pipe, steps=6))
    first = session.report()
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    quiet(pipe, **demo_call(pipe, steps=4))
    second = session.report()
    assert second is not first and second.num_steps == 4 and second.counts()["reuse"] > 0
    assert session.plan.timesteps == tuple(float(t) for t in pipe.scheduler.timesteps)


def test_shared_scheduler_pipelines_stay_independent():
    a, b = tiny_latte_pipeline(seed=0), tiny_latte_pipeline(seed=1)
    b.scheduler = a.scheduler
    reference_b = quiet(b, **demo_call(b, steps=6))
    sa, sb = cachekit.enable(a, REUSE), cachekit.enable(b, ALL_COMPUTE)
    quiet(a, **demo_call(a, steps=6))
    assert torch.equal(quiet(b, **demo_call(b, steps=6)), reference_b)
    quiet(a, **demo_call(a, steps=4))
    assert sa.report().num_steps == 4 and sa.report().counts()["reuse"] > 0
    assert sb.report().num_steps == 6
    cachekit.disable(a)
    cachekit.disable(b)
    assert not {"step", "set_timesteps"} & set(a.scheduler.__dict__)


def test_shared_transformer_is_cached_only_in_its_pipeline():
    a = tiny_latte_pipeline()
    b = tiny_latte_pipeline()
    b.transformer = a.transformer
    reference = quiet(b, **demo_call(b, steps=6))
    session = cachekit.enable(a, REUSE)
    quiet(a, **demo_call(a, steps=6))
    report = session.report()
    assert torch.equal(quiet(b, **demo_call(b, steps=6)), reference)  # b's run is not a's
    assert session.report() is report


def test_direct_calls_of_a_pipeline_transformer_compute_normally():
    pipe = tiny_latte_pipeline()
    model = pipe.transformer
    args = dict(timestep=torch.tensor([999, 999]), encoder_hidden_states=torch.randn(2, 6, 32), return_dict=False)
    x = torch.randn(2, 4, 4, 8, 8)
    with torch.no_grad():
        expected = model(x, **args)[0]
        cachekit.enable(pipe, REUSE)
        assert all(torch.equal(model(x, **args)[0], expected) for _ in range(3))
        assert model._cachekit_session.runtime.run is None
