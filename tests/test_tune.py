"""cachekit tune: the search against exhaustive enumeration and hand-computed toys, the schedule
policy it writes, the calibration cache, the [tuned] config's round trip, and the CLI."""

from __future__ import annotations

import copy
import itertools
import math
import warnings

import pytest
import torch

import cachekit
from cachekit.config import dump_config, load_config
from cachekit.errors import CachekitError, ConfigError
from cachekit.evaluate import Job
from cachekit.policy import RunInfo
from cachekit.tuning import tune_job
from cachekit.tuning.search import StepErrors, best_plans
from cachekit.tuning.trajectory import record, scheduler_gains

from .pipelines import tiny_wan_pipeline, wan_call

STEPS = 6


def _brute_force(errors: StepErrors, order: int, m: int, max_gap: int) -> float:
    n, best = errors.num_steps, math.inf
    for rest in itertools.combinations(range(1, n), m - 1):
        computed = (0, *rest)
        gaps = [b - a for a, b in zip(computed, computed[1:])] + [n - computed[-1]]
        if max(gaps) <= max_gap:
            best = min(best, errors.plan_error(computed, order))
    return best


@pytest.mark.parametrize("order", [0, 1, 2])
def test_search_finds_the_least_error_plan_of_every_size(order):
    """The dynamic program against every plan of a 9-step run (random trajectory and gains)."""
    generator = torch.Generator().manual_seed(order)
    guided = torch.randn(9, 2, 5, generator=generator).cumsum(0)
    errors = StepErrors(guided, torch.rand(9, generator=generator).tolist())
    plans = best_plans(errors, order, max_gap=4)
    for m, candidate in plans.items():
        assert candidate.computed[0] == 0 and len(candidate.computed) == m
        assert candidate.error == pytest.approx(errors.plan_error(candidate.computed, order))
        assert candidate.error == pytest.approx(_brute_force(errors, order, m, 4))
    assert min(plans) == 3 and plans[9].error == 0  # 9 steps, gaps of 4 at most: 3 computed at least


def test_regular_plans_include_the_quality_preset_and_respect_the_size():
    """The quality preset (TaylorSeer lite: 3 warm-up steps, every other step, the last 10% computed)
    is one of the regular plans of 18 steps of 30."""
    from cachekit.tuning.search import regular_plans

    plans = regular_plans(30, 18, 2)
    quality = (0, 1, 2, *range(4, 27, 2), 27, 28, 29)
    assert quality in {p.computed for p in plans}
    assert all(len(p.computed) <= 18 and p.computed[0] == 0 and p.order == 2 for p in plans)
    assert len({p.computed for p in plans}) == len(plans)


def test_step_errors_on_a_hand_computed_toy():
    """A trajectory moving by 2 a step: reuse from step 0 misses by 2, 4, 6 (gain 1, then 0.5);
    a first-order forecast from steps 0 and 1 is exact."""
    guided = torch.tensor([0.0, 2.0, 4.0, 6.0]).view(4, 1)
    errors = StepErrors(guided, [1.0, 1.0, 0.5, 0.5])
    assert errors.plan_error((0,), 0) == pytest.approx(2 + 0.5 * 4 + 0.5 * 6)
    assert errors.plan_error((0, 1), 1) == pytest.approx(0.0)
    assert errors.plan_error((0, 1), 0) == pytest.approx(0.5 * 2 + 0.5 * 4)


def test_scheduler_gains_are_the_step_coefficients():
    """Euler's coefficient on the model output is sigma_next - sigma; DDIM v-prediction's is
    sqrt(1 - a_prev) sqrt(a) - sqrt(a_prev) sqrt(1 - a)."""
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    euler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    euler.set_timesteps(5)
    sigmas = euler.sigmas.tolist()
    assert scheduler_gains(euler, 5) == pytest.approx([abs(b - a) for a, b in zip(sigmas, sigmas[1:])], rel=1e-5)
    ddim = DDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True)
    ddim.set_timesteps(4)
    alphas = ddim.alphas_cumprod
    expected = []
    for t in ddim.timesteps.tolist():
        prev = t - 1000 // 4
        a, a_prev = alphas[t], (alphas[prev] if prev >= 0 else ddim.final_alpha_cumprod)
        expected.append(abs(float((1 - a_prev).sqrt() * a.sqrt() - a_prev.sqrt() * (1 - a).sqrt())))
    assert scheduler_gains(ddim, 4) == pytest.approx(expected, rel=1e-4)


def test_schedule_plans_the_listed_steps_and_maps_another_step_count():
    policy = load_config({"policy": [{"type": "schedule", "compute": [0, 1, 4, 8], "num_steps": 10, "order": 2}]}).policies[0]
    actions = policy.plan_site(None, "cond", range(10), RunInfo(10))
    assert [s for s, a in actions.items() if a.kind == "compute"] == [0, 1, 4, 8]
    assert actions[2].kernel == "taylor" and actions[2].sources == ()  # bound by the planner
    assert [dict(actions[s].params).get("history") for s in (2, 5)] in ([None, None], [2, 3])
    with pytest.warns(UserWarning, match="lists the steps of a 10-step run; this run has 20"):
        mapped = policy.plan_site(None, "cond", range(20), RunInfo(20))
    assert [s for s, a in mapped.items() if a.kind == "compute"] == [0, 2, 8, 16]


@pytest.mark.parametrize("entry, message", [
    ({"compute": [0, 3, 2], "num_steps": 5}, "ascending order"),
    ({"compute": [0, 5], "num_steps": 5}, "steps of a 5-step run"),
    ({"compute": [], "num_steps": 5}, "non-empty list"),
    ({"compute": [0, 1], "num_steps": 0}, "num_steps"),
    ({"num_steps": 4}, "missing required field\\(s\\) 'compute'"),
])
def test_schedule_refuses_bad_steps_in_one_line(entry, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config({"policy": [{"type": "schedule", **entry}]})
    assert "\n" not in str(info.value)


def _wan_job() -> Job:
    pipe = tiny_wan_pipeline()

    def call_kwargs(prompts, seed):
        return wan_call(pipe, STEPS, seed)

    def generate(pipe, prompts, seed, **extra):
        return pipe(**wan_call(pipe, STEPS, seed), **extra).frames

    return Job(pipe, generate, ("a", "b"), "tiny wan", call_kwargs)


def _counting(job: Job) -> list[int]:
    """Denoiser calls made by ``job``'s pipeline and every copy of it (the count list is shared)."""
    calls = [0]
    job.pipe.transformer.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_recording_observes_every_step_and_changes_nothing():
    """The calibration run computes every step: its output is the uncached output bitwise, and the
    guided trajectory is uncond + guidance * (cond - uncond) of the recorded branches."""
    job = _wan_job()
    plain = job.generate(job.pipe, (), 0)
    trajectory = record(job.pipe, lambda: job.generate(job.pipe, (), 0), guidance=5.0)
    assert torch.equal(trajectory.reference, plain)
    assert trajectory.guided.shape[0] == STEPS and set(trajectory.branches) == {"cond", "uncond"}
    assert len(trajectory.gains) == STEPS and all(g > 0 for g in trajectory.gains)
    kwargs = wan_call(job.pipe, STEPS, 0)  # step 0 by hand: the transformer on the initial latents
    t = job.pipe.scheduler.timesteps[:1]
    with torch.no_grad():
        cond, uncond = (job.pipe.transformer(hidden_states=kwargs["latents"], timestep=t, encoder_hidden_states=e,
                                             return_dict=False)[0]
                        for e in (kwargs["prompt_embeds"], kwargs["negative_prompt_embeds"]))
    torch.testing.assert_close(trajectory.guided[0], uncond + 5.0 * (cond - uncond))
    assert not hasattr(job.pipe.transformer, "_cachekit_session")


def test_tune_writes_a_config_that_round_trips_and_reuses_its_calibration(tmp_path):
    job = _wan_job()
    calls = _counting(job)
    tuned = tune_job(job, budget=[0.5, 0.7], cache_dir=tmp_path, progress=lambda line: None)
    first = calls[0]
    assert first > 0 and set(tuned.configs) == {"budget 0.5", "budget 0.7"}
    for name, config in tuned.configs.items():
        provenance = config.tuned
        assert provenance["fraction"] <= float(name.split()[-1]) + 1e-9
        assert provenance["model"] == "WanTransformer3DModel" and provenance["steps"] == STEPS
        assert provenance["scheduler"] == "FlowMatchEulerDiscreteScheduler" and provenance["guidance_scale"] == 5.0
        policy = config.policies[0]
        if policy.type_name == "schedule":  # the measured share of the FLOPs is the planned one
            assert provenance["fraction"] == pytest.approx(len(policy.compute) / STEPS, abs=1e-4)
        path = tmp_path / f"{name.split()[-1]}.toml"
        path.write_text(tuned.toml(name))
        loaded = load_config(path)
        assert loaded == config and load_config(_dumped(tmp_path, loaded)) == loaded
        plans = []
        for source in (config, path):
            twin = copy.deepcopy(job.pipe)
            session = cachekit.enable(twin, source)
            plan = session.plan_for(STEPS)
            plans.append({n: plan.action(n) for n in plan.graph})
            cachekit.disable(twin)
        assert plans[0] == plans[1]
    # a second tune, another budget met by what was measured: no pipeline call at all
    again = tune_job(job, budget=0.5, cache_dir=tmp_path, progress=lambda line: None)
    assert calls[0] == first
    assert again.configs["budget 0.5"].policies == tuned.configs["budget 0.5"].policies


def _dumped(folder, config):
    path = folder / "dumped.toml"
    path.write_text(dump_config(config))
    return path


def test_tuned_config_warns_on_another_scheduler_and_another_step_count(tmp_path):
    from diffusers import UniPCMultistepScheduler

    job = _wan_job()
    tuned = tune_job(job, budget=0.5, cache_dir=tmp_path, progress=lambda line: None)
    path = tmp_path / "t.toml"
    path.write_text(tuned.toml())
    pipe = copy.deepcopy(job.pipe)
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    with pytest.warns(UserWarning, match="was tuned for the scheduler FlowMatchEulerDiscreteScheduler; this one is "
                                         "UniPCMultistepScheduler"):
        cachekit.enable(pipe, path)
    cachekit.disable(pipe)
    pipe = copy.deepcopy(job.pipe)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        session = cachekit.enable(pipe, path)  # the setting it was tuned for: no warning
    if session.config.policies[0].type_name == "schedule":
        with pytest.warns(UserWarning, match=f"lists the steps of a {STEPS}-step run; this run has 12"):
            session.plan_for(12)


def test_objectives_are_checked_in_one_line(tmp_path):
    job = _wan_job()
    for kwargs, message in [({}, "one objective"), ({"budget": 0.5, "min_psnr": 30}, "one objective"),
                            ({"budget": 1.5}, r"budget=1.5: expected a share"), ({"min_psnr": float("nan")}, "min_psnr")]:
        with pytest.raises(CachekitError, match=message):
            tune_job(job, cache_dir=tmp_path, progress=lambda line: None, **kwargs)


def test_min_psnr_gives_the_fewest_flops_measured_at_that_quality(tmp_path):
    job = _wan_job()
    tuned = tune_job(job, min_psnr=30.0, cache_dir=tmp_path, progress=lambda line: None)
    chosen = tuned.config.tuned
    assert chosen["psnr"] >= 30.0
    measured = [p.measured for p in tuned.points if p.measured is not None and p.measured["psnr"] >= 30.0]
    assert chosen["fraction"] == pytest.approx(min(m["fraction"] for m in measured), abs=1e-4)


def test_report_counts_the_executed_share_of_the_flops():
    """The report's compute fraction equals torch's FLOP count of the cached run over the uncached one."""
    from cachekit.cost import flop_counter

    job = _wan_job()
    with flop_counter() as plain:
        job.generate(job.pipe, (), 0)
    pipe = copy.deepcopy(job.pipe)
    session = cachekit.enable(pipe, {"policy": [{"type": "schedule", "compute": [0, 1, 3], "num_steps": STEPS}]})
    job.generate(pipe, (), 0)  # the first run profiles the model
    with flop_counter() as cached:
        job.generate(pipe, (), 0)
    assert session.report().compute_fraction == pytest.approx(0.5)
    assert session.report().compute_fraction == pytest.approx(cached.get_total_flops() / plain.get_total_flops())


def test_cli_tune_on_the_embedded_model(tmp_path, capsys):
    from cachekit.cli import main

    out = tmp_path / "tuned.toml"
    assert main(["tune", "--budget", "0.5", "--steps", "6", "--prompts", "2", "--out", str(out),
                 "--cache", str(tmp_path / "cache"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "chosen for" in printed and "budget 0.5" in printed and "held out (2 prompts)" in printed
    chosen = next(line for line in printed.splitlines() if line.rstrip().endswith(" budget 0.5"))
    assert " yes  budget 0.5" in chosen  # the best at its budget is on the measured front
    config = load_config(out)
    assert config.tuned["model"] == "LatteTransformer3DModel" and config.tuned["fraction"] <= 0.5
    assert len(config.tuned["holdout_prompts"]) == 2 and "holdout_psnr" in config.tuned
    assert (tmp_path / "tuned-front.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["tune", "--budget", "0.5", "--out", str(tmp_path / "x.json")]) == 2
