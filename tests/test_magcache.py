"""``magcache``: diffusers' MagCache bitwise in compat mode, its rule on hand-computed ratios, the ratios
mapped to other step counts as diffusers maps them, and calibration (Python and command line) into a
config file that ``enable`` loads, per CFG branch and per Wan 2.2 expert."""

import ast
import contextlib
import io
import json

import pytest
import torch
import yaml
from diffusers.hooks import MagCacheConfig
from diffusers.hooks.mag_cache import nearest_interp

import cachekit
from cachekit.calibration import measure
from cachekit.cli import main
from cachekit.errors import ConfigError, EnableError, PlanError
from cachekit.policies.magcache import MagCache, nearest, skip_pattern
from tests.pipelines import (cogvideox_call, model_call, tiny_cogvideox_pipeline, tiny_hunyuan_video_pipeline,
                             tiny_mochi_pipeline, tiny_wan22_pipeline, tiny_wan_pipeline, wan_call)

torch.set_num_threads(1)

FAMILIES = {"wan": (tiny_wan_pipeline, wan_call), "cogvideox": (tiny_cogvideox_pipeline, cogvideox_call),
            # blocks returning (hidden, text) streams: diffusers passes the text stream through a skip,
            # cachekit adds its residual; the models read only the hidden stream after the last block
            "hunyuan_video": (tiny_hunyuan_video_pipeline, lambda pipe, n: model_call("hunyuan_video", pipe, n)),
            "mochi": (tiny_mochi_pipeline, lambda pipe, n: model_call("mochi", pipe, n))}
#: Twelve ratios (mapped to the runs' ten steps) that let the threshold skip a few steps.
RATIOS = [1.0, 1.05, 1.02, 1.01, 1.0, 0.99, 1.01, 0.98, 0.97, 0.95, 0.93, 0.9]


def stack_log(session, branch="cond"):
    """The stack's kind per step on ``branch`` in the session's last run."""
    return [kind for step, branches, kind in session.runtime.last_run.history("stack") if branch in branches]


@pytest.mark.parametrize("family", ["wan", "cogvideox", "hunyuan_video", "mochi"])
def test_compat_equals_diffusers_mag_cache_bitwise(family):
    build, call = FAMILIES[family]
    pipe = build()
    pipe.transformer.enable_cache(MagCacheConfig(mag_ratios=RATIOS, num_inference_steps=10, threshold=0.06,
                                                 max_skip_steps=3, retention_ratio=0.2))
    expected = pipe(**call(pipe, 10)).frames
    pipe.transformer.disable_cache()
    uncached = pipe(**call(pipe, 10)).frames
    config = {"policy": [{"type": "magcache", "mag_ratios": RATIOS, "threshold": 0.06, "max_skips": 3,
                          "retention_ratio": 0.2, "compat": "diffusers"}]}
    with cachekit.enabled(pipe, config) as session:
        got = pipe(**call(pipe, 10)).frames
        pattern = stack_log(session)
    assert torch.equal(got, expected)
    assert not torch.equal(got, uncached)  # steps were really skipped
    # retention int(0.2 * 10 + 0.5) = 2; the mapped ratios accumulate past 0.06 at steps 5 and 7
    assert pattern == ["compute", "compute", "reuse", "reuse", "reuse", "compute", "reuse", "compute", "compute", "compute"]


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
def test_calibration_equals_diffusers_calibration(family):
    build, call = FAMILIES[family]
    pipe = build()
    pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=6))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # diffusers prints each cache context's ratios when it ends
        pipe(**call(pipe, 6))
    pipe.transformer.disable_cache()
    expected = [ast.literal_eval(line) for line in printed.getvalue().splitlines() if line.startswith("[1.0")]
    calibration = measure(pipe, **call(pipe, 6))
    if family == "wan":  # split CFG: one list per branch, cond's context ends first
        assert [calibration.ratios[("cond", 0)], calibration.ratios[("uncond", 0)]] == expected
    else:  # batched CFG: one list for the call carrying both branches
        assert [calibration.ratios[("uncond+cond", 0)]] == expected
    assert all(len(r) == 6 and r[0] == 1.0 for r in expected)


def test_calibrate_writes_a_file_that_enable_loads(tmp_path):
    pipe = tiny_wan_pipeline()
    uncached = pipe(**wan_call(pipe, 6)).frames
    path = tmp_path / "wan-magcache.toml"
    config = cachekit.calibrate(pipe, out=path, **wan_call(pipe, 6))
    assert not hasattr(pipe.transformer, "_cachekit_session")
    assert torch.equal(pipe(**wan_call(pipe, 6)).frames, uncached)  # the hooks are gone
    measured = measure(pipe, **wan_call(pipe, 6))
    policy = cachekit.load_config(path).policies[0]
    assert policy == config.policies[0]
    assert list(policy.mag_ratios) == measured.ratios[("cond", 0)]
    assert list(policy.mag_ratios_uncond) == measured.ratios[("uncond", 0)]
    assert policy.calibrated["model"] == "WanTransformer3DModel" and policy.calibrated["steps"] == 6
    assert policy.calibrated["scheduler"] == "FlowMatchEulerDiscreteScheduler" and policy.calibrated["guidance_scale"] == 5.0
    assert path.read_text().startswith("# MagCache magnitude ratios measured by `cachekit calibrate`")
    with cachekit.enabled(pipe, str(path)) as session:
        pipe(**wan_call(pipe, 6))
        assert session.config.policies[0].mag_ratios == policy.mag_ratios
        for branch, ratios in (("cond", policy.mag_ratios), ("uncond", policy.mag_ratios_uncond)):
            skips = skip_pattern(ratios, range(6), retention=1, threshold=0.06, max_skips=3)  # int(0.2 * 6 + 0.5) = 1
            assert stack_log(session, branch) == ["reuse" if skip else "compute" for skip in skips]


def test_cli_calibrate(tmp_path, capsys):
    out = tmp_path / "cli.toml"
    assert main(["calibrate", "--model", "tests.pipelines:tiny_cogvideox_pipeline", "--call",
                 "tests.pipelines:cogvideox_call", "--steps", "4", "--out", str(out), "--quiet"]) == 0
    assert "uncond+cond: 4 ratios" in capsys.readouterr().out
    policy = cachekit.load_config(out).policies[0]
    assert len(policy.mag_ratios) == 4 and policy.mag_ratios[0] == 1.0 and policy.mag_ratios_uncond is None
    assert policy.calibrated["cfg"] == "batched"
    assert main(["calibrate", "--model", "tests.pipelines:tiny_cogvideox_pipeline", "--out", str(tmp_path / "x.json")]) == 2


@pytest.mark.parametrize("source, target", [(12, 10), (10, 12), (28, 50), (50, 28), (5, 1), (1, 4), (7, 7), (30, 8)])
def test_ratios_map_to_other_step_counts_as_diffusers_does(source, target):
    values = [1.0 + 0.01 * ((i * 7) % 11) - 0.05 for i in range(source)]
    assert nearest(values, target) == nearest_interp(torch.tensor(values), target).tolist()


def test_retention_and_max_skips_on_hand_computed_ratios():
    # equal ratios never accumulate error: retention int(0.2 * 10 + 0.5) = 2 computes steps 0-1, then
    # K = 3 skips in a row, a compute (the 4th would exceed K), 3 skips, a compute
    pattern = skip_pattern([1.0] * 10, range(10), retention=2, threshold=0.06, max_skips=3)
    assert pattern == [False, False, True, True, True, False, True, True, True, False]
    # step 2: |1 - 1.02| = 0.02 skip; 3: + |1 - 1.0404| = 0.0604 > 0.06 compute (reset); 4: 0 skip;
    # 5: 0.05 skip; 6: 0.05 + 0.05 = 0.10 compute (reset); 7: 0 skip
    ratios = [1.0, 1.0, 1.02, 1.02, 1.0, 1.05, 1.0, 1.0]
    pattern = skip_pattern(ratios, range(8), retention=2, threshold=0.06, max_skips=3)
    assert pattern == [False, False, True, False, True, True, False, True]
    # the same through a run: retention_ratio 0.25 of 8 steps is int(2.5) = 2 protected steps
    pipe = tiny_wan_pipeline()
    config = {"policy": [{"type": "magcache", "mag_ratios": ratios, "retention_ratio": 0.25}]}
    with cachekit.enabled(pipe, config) as session:
        pipe(**wan_call(pipe, 8))
        expected = ["reuse" if skip else "compute" for skip in pattern]
        assert stack_log(session, "cond") == expected and stack_log(session, "uncond") == expected
        kinds = {action.kind for _, action in session.plan.nodes()}
    assert kinds <= {"compute", "reuse", "skip"}  # planned, nothing decided at run time: no host sync


def test_unconditional_branch_uses_its_own_ratios():
    pipe = tiny_wan_pipeline()
    config = {"policy": [{"type": "magcache", "mag_ratios": [1.0] * 6, "mag_ratios_uncond": [1.0, 1.5, 1.5, 1.5, 1.5, 1.5],
                          "retention_ratio": 0.0}]}
    with cachekit.enabled(pipe, config) as session:
        pipe(**wan_call(pipe, 6))
        assert stack_log(session, "cond") == ["compute", "reuse", "reuse", "reuse", "compute", "reuse"]
        assert stack_log(session, "uncond") == ["compute"] * 6


def test_wan22_experts_get_their_own_ratios(tmp_path):
    pipe = tiny_wan22_pipeline()
    path = tmp_path / "wan22.toml"
    cachekit.calibrate(pipe, out=path, **wan_call(pipe, 8))
    policy = cachekit.load_config(path).policies[0]
    assert policy.boundary == 875.0
    assert len(policy.mag_ratios) == policy.calibrated["expert_1_steps"] == 4
    assert len(policy.mag_ratios_2) == policy.calibrated["expert_2_steps"] == 4
    assert policy.mag_ratios[0] == policy.mag_ratios_2[0] == 1.0  # each expert's list starts over
    assert policy.mag_ratios_uncond is not None and policy.mag_ratios_2_uncond is not None
    # ratios of 1 would skip everything after retention; the second expert's first step computes all the same
    config = {"policy": [{"type": "magcache", "mag_ratios": [1.0] * 3, "mag_ratios_2": [1.0] * 5, "boundary": 875.0,
                          "retention_ratio": 0.0, "max_skips": 10}]}
    with cachekit.enabled(pipe, config) as session:
        pipe(**wan_call(pipe, 8))
        experts = session.config.policies[0].experts(cachekit.RunInfo(8, session.plan.timesteps))
        switch = experts.index(1)
        expected = ["compute" if step in (0, switch) else "reuse" for step in range(8)]
        assert stack_log(session) == expected and 0 < switch < 8


def test_config_round_trip():
    entry = {"type": "magcache", "mag_ratios": [1, 1.01, 0.99], "mag_ratios_uncond": [1.0, 1.02, 0.98],
             "mag_ratios_2": [1.0, 0.97], "boundary": 900, "threshold": 0.1, "max_skips": 2, "retention_ratio": 0.1,
             "last_blocks": 1, "calibrated": {"model": "WanTransformer3DModel", "steps": 3, "guidance_scale": 5.0}}
    config = cachekit.load_config({"policy": [entry]})
    assert config.policies[0].mag_ratios == (1.0, 1.01, 0.99)
    for fmt, parse in (("toml", cachekit.config.tomllib.loads), ("json", json.loads), ("yaml", yaml.safe_load)):
        assert cachekit.load_config(parse(cachekit.dump_config(config, fmt))) == config
    hash(config.policies[0])


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="mag_ratios.*cachekit calibrate"):
        cachekit.load_config("magcache")
    with pytest.raises(ConfigError, match="mag_ratios_uncond"):
        cachekit.load_config({"policy": [{"type": "magcache", "mag_ratios": [1.0], "mag_ratios_uncond": [1.0],
                                          "compat": "diffusers"}]})
    with pytest.raises(ConfigError, match="boundary"):
        cachekit.load_config({"policy": [{"type": "magcache", "mag_ratios": [1.0], "mag_ratios_2": [1.0]}]})
    with pytest.raises(ConfigError, match="mag_ratios"):
        cachekit.load_config({"policy": [{"type": "magcache", "mag_ratios": [1.0, -1.0]}]})
    for ratios in ([1.0, True], [10**400], [], 1.0):
        with pytest.raises(ConfigError, match="mag_ratios"):
            cachekit.load_config({"policy": [{"type": "magcache", "mag_ratios": ratios}]})
    with pytest.raises(ConfigError, match="calibrated"):
        cachekit.load_config({"policy": [{"type": "magcache", "mag_ratios": [1.0], "calibrated": {"a": [1]}}]})
    pipe = tiny_wan_pipeline()
    with pytest.raises(PlanError, match="block stack only"):
        cachekit.enable(pipe, {"policy": [{"type": "magcache", "mag_ratios": [1.0], "sites": {"kinds": ["block"]}}]})
    assert not hasattr(pipe.transformer, "_cachekit_session")
    with cachekit.enabled(pipe, {"policy": [{"type": "magcache", "mag_ratios": [1.0]}]}):
        with pytest.raises(EnableError, match="cachekit session"):
            cachekit.calibrate(pipe, **wan_call(pipe, 2))
    assert isinstance(MagCache(mag_ratios=[1.0]), MagCache)
