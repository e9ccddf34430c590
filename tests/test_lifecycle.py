"""A run cut short leaves nothing active; wrappers around the model are unwrapped, followed or refused."""

import warnings

import pytest
import torch

import cachekit
from cachekit import EnableError
from cachekit.demo import demo_call, tiny_latte_pipeline

torch.set_num_threads(1)

REUSE = {"policy": [{"type": "reuse", "interval": 2, "sites": {"kinds": ["attn", "mlp"]}, "window": {"start": 0.0, "end": 1.0}}]}


def quiet(pipe, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pipe(**{**demo_call(pipe, steps=6), **kwargs}).frames


def direct_inputs():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 4, 8, 8, generator=generator)
    return x, dict(timestep=torch.tensor([500, 500]), encoder_hidden_states=torch.randn(2, 6, 32, generator=generator),
                   return_dict=False)


def uncached_direct():
    x, kwargs = direct_inputs()
    with torch.no_grad():
        return tiny_latte_pipeline().transformer(x, **kwargs)[0]


def check_nothing_active(pipe, session, cached_run):
    """Direct calls compute normally (the first one outside the pipeline drops a run cut short by an
    exception the hooks never saw), and the next pipeline call plans afresh."""
    x, kwargs = direct_inputs()
    expected = uncached_direct()
    with torch.no_grad():
        for _ in range(6):  # as many calls as the run had steps: no stale plan, no KeyError
            assert torch.equal(pipe.transformer(x, **kwargs)[0], expected)
            assert session.runtime.run is None and not session.runtime.clock.active
    built = session.plans_built
    assert torch.equal(quiet(pipe), cached_run)  # the next pipeline call plans afresh (same schedule: same plan)
    assert session.plans_built == built and session.report().counts()["reuse"] > 0


def test_exception_in_step_callback_leaves_nothing_active():
    pipe = tiny_latte_pipeline()
    session = cachekit.enable(pipe, REUSE)
    cached_run = quiet(pipe)

    def fail(pipe, step, timestep, kwargs):
        if step == 3:
            raise RuntimeError("stop here")
        return kwargs

    with pytest.raises(RuntimeError, match="stop here"):
        quiet(pipe, callback_on_step_end=fail)
    check_nothing_active(pipe, session, cached_run)


def test_interrupt_leaves_nothing_active():
    pipe = tiny_latte_pipeline()
    session = cachekit.enable(pipe, REUSE)
    cached_run = quiet(pipe)

    def interrupt(pipe, step, timestep, kwargs):
        pipe._interrupt = step >= 2
        return kwargs

    quiet(pipe, callback_on_step_end=interrupt)
    assert session.runtime.run is None  # ended when the pipeline call ended: its report has the steps that ran
    assert {step for step, _, _ in session.report().executed} == {0, 1, 2}
    pipe._interrupt = False
    check_nothing_active(pipe, session, cached_run)


def test_bare_transformer_with_cfg_called_with_batch_one_is_refused():
    model = tiny_latte_pipeline().transformer
    cachekit.enable(model, REUSE, num_inference_steps=4, cfg=True)
    x, kwargs = direct_inputs()
    one = dict(kwargs, timestep=kwargs["timestep"][:1], encoder_hidden_states=kwargs["encoder_hidden_states"][:1])
    with torch.no_grad(), pytest.raises(EnableError, match="batch of 1 cannot carry the CFG branches uncond, cond"):
        model(x[:1], **one)
    assert model._cachekit_session.runtime.run is None


def test_diffusers_cache_enabled_after_cachekit_is_refused():
    from diffusers import FasterCacheConfig

    pipe = tiny_latte_pipeline()
    session = cachekit.enable(pipe, REUSE)
    pipe.transformer.enable_cache(FasterCacheConfig(spatial_attention_block_skip_range=2,
                                                    current_timestep_callback=lambda: pipe.current_timestep))
    with pytest.raises(EnableError, match="diffusers' own cache was enabled on LatteTransformer3DModel after cachekit.enable"):
        quiet(pipe)
    pipe.transformer.disable_cache()
    out = quiet(pipe)  # cachekit's run again, as on a pipeline diffusers' cache never touched
    fresh = tiny_latte_pipeline()
    cachekit.enable(fresh, REUSE)
    assert torch.equal(out, quiet(fresh))
    assert session.report().counts()["reuse"] > 0


def test_enable_on_a_compiled_transformer_unwraps_it():
    pipe = tiny_latte_pipeline()
    reference = quiet(pipe)
    original = pipe.transformer
    pipe.transformer = torch.compile(original, backend="eager")
    session = cachekit.enable(pipe, {"policy": [{"type": "reuse", "interval": 1, "sites": {"kinds": ["attn"]}}]})
    assert session.model is original and original._cachekit_session is session
    assert torch.equal(quiet(pipe), reference)
    assert session.report().counts() == {"compute": session.plan.graph.number_of_nodes()}
    cachekit.disable(pipe)
    assert not hasattr(original, "_cachekit_session")


def test_compiling_after_enable_runs_as_eager_cached():
    pipe = tiny_latte_pipeline()
    session = cachekit.enable(pipe, REUSE)
    eager = quiet(pipe)
    eager_counts = session.report().counts()
    pipe.transformer = torch.compile(pipe.transformer, backend="eager", dynamic=True)
    assert torch.equal(quiet(pipe), eager)
    assert session.report().counts() == eager_counts


def test_an_object_with_a_transformer_and_no_scheduler_is_refused_at_enable():
    class Holder:
        def __init__(self, transformer):
            self.transformer = transformer

    holder = Holder(tiny_latte_pipeline().transformer)
    with pytest.raises(EnableError, match="Holder has a `transformer` but no `scheduler`.*enable the transformer itself "
                                          "with num_inference_steps"):
        cachekit.enable(holder, REUSE)
    assert not hasattr(holder.transformer, "_cachekit_session")


@pytest.mark.parametrize("family", ["latte", "wan"])
def test_measuring_the_costs_makes_no_forward_unless_asked(family):
    """By default a session's first run counts FLOPs in its own calls: the model makes as many forwards
    as an uncached run; ``profile=True`` adds timed uncached forwards and predicts in seconds."""
    from tests.pipelines import tiny_wan_pipeline, wan_call

    forwards = []
    for profile in (False, True):
        pipe = tiny_latte_pipeline() if family == "latte" else tiny_wan_pipeline()
        kwargs = demo_call(pipe, steps=6) if family == "latte" else wan_call(pipe, 6)
        first = pipe.transformer.get_submodule("transformer_blocks.0" if family == "latte" else "blocks.0")
        count = [0]
        first.register_forward_pre_hook(lambda module, args: count.__setitem__(0, count[0] + 1))
        pipe(**kwargs)
        uncached, count[0] = count[0], 0
        session = cachekit.enable(pipe, {"policy": [{"type": "reuse", "interval": 1}]}, profile=profile)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            pipe(**kwargs)
        report = session.report()
        cachekit.disable(pipe)
        forwards.append(count[0] - uncached)
        assert report.prediction_basis == ("seconds" if profile else "flops")
        assert report.compute_fraction == 1.0
    assert forwards[0] == 0 and forwards[1] > 0


@pytest.mark.parametrize("family, per_step", [("latte", 1), ("wan", 2)])  # batched; split: a call per branch
def test_the_first_runs_time_leaves_the_profiling_out(monkeypatch, family, per_step):
    """The report's seconds count the run's own forwards only: with a clock that ticks once per
    forward (of the first block), the first run, which also profiles the model, measures one tick
    per denoiser call, steps x calls a step, and reports the profiling's forwards apart."""
    import types

    from cachekit import run, runtime
    from tests.pipelines import tiny_wan_pipeline, wan_call

    pipe = tiny_latte_pipeline() if family == "latte" else tiny_wan_pipeline()
    kwargs = demo_call(pipe, steps=6) if family == "latte" else wan_call(pipe, 6)
    ticks = [0.0]
    for module in (run, runtime):  # the run's step clock and the runtime's profiling clock
        monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=lambda: ticks[0]))
    first = pipe.transformer.get_submodule("transformer_blocks.0" if family == "latte" else "blocks.0")
    first.register_forward_pre_hook(lambda module, args: ticks.__setitem__(0, ticks[0] + 1))
    session = cachekit.enable(pipe, {"policy": [{"type": "reuse", "interval": 1}]}, profile=True)  # every node computes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pipe(**kwargs)
    report = session.report()
    cachekit.disable(pipe)
    assert report.seconds == 6 * per_step and report.step_seconds[0] == per_step
    assert report.profile_seconds >= 2 and report.to_dict()["profile_seconds"] == report.profile_seconds
    assert f"(and {report.profile_seconds:.3f} s profiling the model, left out)" in report.text()
