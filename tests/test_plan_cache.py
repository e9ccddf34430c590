"""A session keeps a bounded number of plans (least recently used out), with their predictions; the
report counts them. A plan dropped and built again runs as the first one did."""

import gc
import weakref

import torch

import cachekit
from cachekit.demo import tiny_latte_pipeline
from cachekit.runtime import PLAN_CACHE_SIZE

from .conftest import run

torch.set_num_threads(1)

REUSE = {"policy": [{"type": "reuse", "interval": 2, "sites": {"kinds": ["attn", "mlp"]}, "window": {"start": 0.0, "end": 1.0}}]}


def test_plans_are_bounded_and_counted_in_the_report():
    pipe = tiny_latte_pipeline()
    session = cachekit.enable(pipe, REUSE)
    first = run(pipe, steps=3)
    first_plan = weakref.ref(session.plan)
    for steps in range(4, 3 + PLAN_CACHE_SIZE):  # a server taking step counts from its requests
        session.plan_for(steps)
    run(pipe, steps=2)
    report = session.report()
    assert report.plans_held == PLAN_CACHE_SIZE and report.plans_built == PLAN_CACHE_SIZE + 1
    assert report.to_dict()["plans_held"] == PLAN_CACHE_SIZE
    assert f"plans: {PLAN_CACHE_SIZE} held (at most {PLAN_CACHE_SIZE}), {PLAN_CACHE_SIZE + 1} built" in report.text()
    assert len(session.runtime.cost._predictions) <= PLAN_CACHE_SIZE
    assert len(session.runtime.cost._fractions) <= PLAN_CACHE_SIZE
    gc.collect()
    assert first_plan() is None  # the first plan is gone, with its prediction
    assert torch.equal(run(pipe, steps=3), first)  # built again, it runs as before
    assert session.report().plans_built == PLAN_CACHE_SIZE + 2


def test_the_plan_used_most_recently_stays():
    pipe = tiny_latte_pipeline()
    session = cachekit.enable(pipe, REUSE)
    kept = session.plan_for(4)
    for steps in range(5, 5 + 3 * PLAN_CACHE_SIZE):
        assert session.plan_for(4) is kept  # used between every other plan: never the least recently used
        session.plan_for(steps)
    assert session.plan_for(4) is kept and session.plans_built == 1 + 3 * PLAN_CACHE_SIZE


def test_a_static_plan_is_costed_once_not_per_run(monkeypatch):
    """Its prediction and its compute fraction are the same every run: kept with the plan."""
    from cachekit.plan import StepPlan

    pipe = tiny_latte_pipeline()
    session = cachekit.enable(pipe, REUSE)
    predictions = []
    original = StepPlan.predict
    monkeypatch.setattr(StepPlan, "predict", lambda self, *a, **k: predictions.append(k["basis"]) or original(self, *a, **k))
    for _ in range(4):
        run(pipe, steps=3)
    assert predictions == ["flops", "flops"]  # the prediction, the fraction: once each
    assert session.report().compute_fraction < 1


def test_a_config_file_is_parsed_and_its_sites_checked_once_per_enable(tmp_path, monkeypatch):
    """Runs of three schedules build three plans, from the sites prepared at enable."""
    from cachekit import config, planner

    parsed, checked = [], []
    parse, check = config._parse, planner.check_selections
    monkeypatch.setattr(config, "_parse", lambda *a: parsed.append(a[0]) or parse(*a))
    monkeypatch.setattr(planner, "check_selections", lambda *a: checked.append(1) or check(*a))
    path = tmp_path / "reuse.toml"
    path.write_text('[[policy]]\ntype = "reuse"\ninterval = 2\n')
    pipe = tiny_latte_pipeline()
    session = cachekit.enable(pipe, str(path))
    for steps in (3, 4, 5):
        run(pipe, steps=steps)
    assert session.runtime.plans_built == 3
    assert parsed == [path] and checked == [1]
