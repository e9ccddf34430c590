"""The run clock alters nothing: with a plan that computes everything, every scheduler and every way of
passing a schedule gives outputs bitwise equal to uncached; strength < 1 plans only the steps that
run; a swapped or shared scheduler and a shared transformer are followed independently."""

import inspect
import warnings

import pytest
import torch
from diffusers import (
    CogVideoXDPMScheduler,
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


def tiny_mochi_pipeline():
    """A ``MochiPipeline`` (it passes ``sigmas`` to the scheduler on every call) with a 2-layer transformer
    of a test-only subclass, so that the test adapter below claims it alone."""
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    class ClockTestMochi(MochiTransformer3DModel):
        """Mochi under a class name only the test adapter claims."""

    torch.manual_seed(0)
    transformer = ClockTestMochi(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16,
        in_channels=12, qk_norm="rms_norm", text_embed_dim=32, time_embed_dim=4, activation_fn="swiglu",
        max_sequence_length=16).eval()
    vae = AutoencoderKLMochi(latent_channels=12, out_channels=3, encoder_block_out_channels=(32,) * 4,
                             decoder_block_out_channels=(32,) * 4, layers_per_block=(1,) * 5).eval()
    pipe = MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                         transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def mochi_call(pipe, steps):
    generator = torch.Generator().manual_seed(1)
    prompt, mask = torch.randn(1, 16, 32, generator=generator), torch.ones(1, 16, dtype=torch.long)
    return dict(prompt=None, prompt_embeds=prompt, prompt_attention_mask=mask, negative_prompt_embeds=0.1 * prompt,
                negative_prompt_attention_mask=mask, num_inference_steps=steps, num_frames=7, height=16, width=16,
                guidance_scale=4.5, output_type="latent", generator=torch.Generator().manual_seed(0))


def register_mochi_test_adapter():
    from cachekit import Adapter, Site, register_adapter, registry

    class MochiTestAdapter(Adapter):
        """Mochi's joint attentions, CFG batched [uncond, cond]."""

        name = "clock-test-mochi"
        model_classes = ("ClockTestMochi",)

        def sites(self):
            return [Site("denoiser", "denoiser", "", layout="BCFHW")] + [
                Site(f"blocks.{i}.attn.joint", "attn.joint", f"transformer_blocks.{i}.attn1", i, "denoiser")
                for i in range(len(self.model.transformer_blocks))]

    if "clock-test-mochi" not in registry().names("adapter"):
        register_adapter(MochiTestAdapter)


def test_mochi_passing_sigmas_is_bitwise_uncached():
    register_mochi_test_adapter()
    pipe = tiny_mochi_pipeline()
    session = cached_equals_uncached(pipe, lambda p: mochi_call(p, 5))
    assert session.plan.num_steps == 5 and session.plan.timesteps[0] == 1000.0
    session = cachekit.enable(pipe, REUSE)
    quiet(pipe, **mochi_call(pipe, 5))
    assert session.report().counts()["reuse"] > 0


class _Model(torch.nn.Module):
    def forward(self, hidden_states, timestep=None):
        return hidden_states


class _Pipe:
    """Calls the clock as a pipeline's denoising loop calls the model: from inside ``__call__``."""

    def __init__(self, timesteps):
        from types import SimpleNamespace

        self.scheduler = SimpleNamespace(timesteps=timesteps)

    def __call__(self, clock, calls):
        ticks = []
        for timestep in calls:
            ticks.append((clock.tick((), {"timestep": timestep}), clock.tock()))
        return ticks


def clock_for(pipe, layout="batched"):
    from cachekit.clock import RunClock

    return RunClock(_Model(), layout, ("cond", "uncond"), pipe, lambda p: True)


def test_clock_locates_copied_and_cast_timesteps_by_value():
    schedule = torch.tensor([999.0, 750.0, 500.0, 250.0])
    pipe = _Pipe(schedule)
    calls = [schedule[0].to(torch.bfloat16).expand(2), schedule[1].clone().expand(2), torch.tensor([500, 500]), 250.0]
    ticks = pipe(clock_for(pipe), calls)
    assert [t.step for t, _ in ticks] == [0, 1, 2, 3] and [done for _, done in ticks] == [False] * 3 + [True]
    assert ticks[0][0].start.timesteps == (999.0, 750.0, 500.0, 250.0)


def test_clock_starts_mid_schedule_and_follows_repeated_timesteps():
    schedule = torch.tensor([999.0, 600.0, 600.0, 300.0, 300.0, 1.0])  # a second-order scheduler repeats them
    pipe = _Pipe(schedule)
    ticks = pipe(clock_for(pipe), [schedule[i].clone() for i in range(1, 6)])  # copies: located by value
    assert ticks[0][0].start.num_steps == 5 and ticks[0][0].start.timesteps == (600.0, 600.0, 300.0, 300.0, 1.0)
    assert [t.step for t, _ in ticks] == [0, 1, 2, 3, 4] and ticks[-1][1]


def test_clock_counts_calls_when_the_timestep_is_not_in_the_schedule_and_splits_branches():
    schedule = torch.tensor([999.0, 500.0])
    pipe = _Pipe(schedule)
    ticks = pipe(clock_for(pipe, "split"), [torch.tensor([0.25])] * 4)  # e.g. a model fed sigmas, not timesteps
    assert [(t.step, t.branch) for t, _ in ticks] == [(0, "cond"), (0, "uncond"), (1, "cond"), (1, "uncond")]
    assert ticks[0][0].start.timesteps == (999.0, 500.0) and ticks[-1][1]


def test_clock_starts_a_new_run_when_a_call_does_not_follow():
    schedule = torch.tensor([999.0, 500.0, 1.0])
    pipe = _Pipe(schedule)
    clock = clock_for(pipe)
    ticks = pipe(clock, [schedule[0], schedule[1], schedule[0], schedule[1], schedule[2]])
    assert [t.start is not None for t, _ in ticks] == [True, False, True, False, False]
    assert [t.step for t, _ in ticks] == [0, 1, 0, 1, 2] and ticks[-1][1]
    assert clock.tick((), {"timestep": schedule[0]}) is None  # outside the pipeline's call


def test_clock_tells_closely_spaced_timesteps_apart():
    """Steps 3% apart: more than a bfloat16 cast's rounding, so a run's first call, located by value,
    lands on its own step (a cast copy of step 1 starts a run of the 5 steps from there)."""
    schedule = torch.tensor([1000.0 - 30 * i for i in range(6)])
    pipe = _Pipe(schedule)
    calls = [schedule[1].to(torch.bfloat16)] + [schedule[i].clone() for i in range(2, 6)]
    ticks = pipe(clock_for(pipe), calls)
    assert ticks[0][0].start.timesteps == tuple(float(v) for v in schedule[1:])
    assert [t.step for t, _ in ticks] == [0, 1, 2, 3, 4] and ticks[-1][1]


def test_copied_timesteps_are_placed_by_position_and_checked_when_the_run_ends():
    """A call whose timestep is a copy (no view of the schedule) from the run's call site is placed
    where it follows the previous call without reading its value (no host sync per call); the run's
    end reads them all at once and says where they disagree with the schedule."""
    from torch.overrides import TorchFunctionMode

    class Reads(TorchFunctionMode):
        count = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in (torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.tolist, torch.Tensor.__bool__):
                Reads.count += 1
            return func(*args, **(kwargs or {}))

    for steps in (6, 12):  # the reads a run makes do not grow with its calls
        schedule = torch.tensor([1000.0 - 30 * i for i in range(steps)])
        pipe = _Pipe(schedule)
        clock = clock_for(pipe)
        Reads.count = 0
        with Reads():
            ticks = pipe(clock, [schedule[0].clone()] + [schedule[i].to(torch.bfloat16).expand(2) for i in range(1, steps)])
        # the first call: the schedule and the call's value; the run's end: every placed call at once
        assert Reads.count == 3 and [t.step for t, _ in ticks] == list(range(steps)) and ticks[-1][1]
        assert clock.notice is None
    wrong = [s.clone() for s in schedule[:-1]] + [schedule[-1].clone() + 20]  # the last is not the schedule's
    assert pipe(clock, wrong)[-1][1] and "schedule element 11: 690 instead of 670" in clock.notice


def test_timesteps_cast_to_integers_are_the_schedules():
    """A pipeline that passes its float timesteps cast to int64 (Helios' pyramid: 1 for 1.39) is
    followed step by step, and the run's end takes each for the schedule's (its truncation)."""
    schedule = torch.tensor([999.6, 700.2, 300.9, 1.39])
    pipe = _Pipe(schedule)
    clock = clock_for(pipe)
    ticks = pipe(clock, [t.to(torch.int64).expand(2) for t in schedule])
    assert [t.step for t, _ in ticks] == [0, 1, 2, 3] and ticks[0][0].start.num_steps == 4 and ticks[-1][1]
    assert clock.notice is None
