"""What a session does with calls that are not the next step of the run: a second thread's pipeline
call while one is running (a clear error, the running call unharmed), a call from a step callback
(computed plainly, the run goes on), and a direct call after a pipeline call died (computed plainly)."""

import threading
import warnings

import pytest
import torch

import cachekit
from cachekit import EnableError
from cachekit.demo import demo_call, tiny_latte_pipeline

torch.set_num_threads(1)

REUSE = {"policy": [{"type": "reuse", "interval": 2, "sites": {"kinds": ["attn", "mlp"]}, "window": {"start": 0.0, "end": 1.0}}]}
STEPS = 6


def call(pipe, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pipe(**{**demo_call(pipe, steps=STEPS), **kwargs}).frames


def direct(model, latents, timestep):
    prompt = torch.randn(latents.shape[0], 6, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(latents, timestep=timestep.expand(latents.shape[0]), encoder_hidden_states=prompt,
                     return_dict=False)[0]


@pytest.fixture(scope="module")
def cached_run():
    pipe = tiny_latte_pipeline()
    session = cachekit.enable(pipe, REUSE)
    out = call(pipe)
    return out, session.report().counts()


def test_a_second_thread_is_refused_while_a_call_runs_and_the_running_call_is_unharmed(cached_run):
    pipe = tiny_latte_pipeline()
    session = cachekit.enable(pipe, REUSE)
    errors = []

    def other():
        try:
            call(pipe)
        except EnableError as error:
            errors.append(str(error))

    def start_other(pipe, step, timestep, kwargs):
        if step == 2:  # the first thread is inside its pipeline call, mid-run
            thread = threading.Thread(target=other)
            thread.start()
            thread.join()
        return kwargs

    out = call(pipe, callback_on_step_end=start_other)
    assert len(errors) == 1 and "a session serves one call at a time" in errors[0]
    assert "copy.deepcopy(pipe)" in errors[0]
    assert torch.equal(out, cached_run[0]) and session.report().counts() == cached_run[1]
    results = []
    thread = threading.Thread(target=lambda: results.append(call(pipe)))  # one after the other: served
    thread.start()
    thread.join()
    assert torch.equal(results[0], cached_run[0]) and session.report().counts() == cached_run[1]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("which", ["current", "next"])
def test_a_call_from_a_step_callback_computes_plainly_and_the_run_goes_on(cached_run, batch, which):
    """A preview in callback_on_step_end, with the step's timestep or the next one (a view of the
    schedule element the run expects next), with one or both CFG branches' batch."""
    pipe = tiny_latte_pipeline()
    session = cachekit.enable(pipe, REUSE)
    previews = []

    def preview(pipe, step, timestep, kwargs):
        latents = kwargs["latents"].repeat(batch, 1, 1, 1, 1)
        t = pipe.scheduler.timesteps[min(step + (which == "next"), STEPS - 1)]
        previews.append((latents, t, direct(pipe.transformer, latents, t)))
        return kwargs

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "1-step run" or idle-policy warnings
        out = pipe(**demo_call(pipe, steps=STEPS), callback_on_step_end=preview).frames
    assert torch.equal(out, cached_run[0])
    assert session.report().counts() == cached_run[1] and session.plans_built == 1
    plain = tiny_latte_pipeline().transformer
    assert len(previews) == STEPS
    for latents, t, got in previews:
        assert torch.equal(got, direct(plain, latents, t))


def test_a_direct_call_after_a_pipeline_call_died_computes_plainly(cached_run):
    pipe = tiny_latte_pipeline()
    session = cachekit.enable(pipe, REUSE)
    seen = {}

    def fail(pipe, step, timestep, kwargs):
        if step == 2:
            seen["latents"] = kwargs["latents"].repeat(2, 1, 1, 1, 1)
            raise KeyboardInterrupt
        return kwargs

    with pytest.raises(KeyboardInterrupt):
        call(pipe, callback_on_step_end=fail)
    plain = tiny_latte_pipeline().transformer
    latents = seen["latents"]
    for step in range(3, STEPS):  # views of the schedule elements the dead run would have run next
        t = pipe.scheduler.timesteps[step]
        assert torch.equal(direct(pipe.transformer, latents, t), direct(plain, latents, t))
        assert session.runtime.run is None
    assert torch.equal(call(pipe), cached_run[0])
