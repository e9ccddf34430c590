"""The step-level presets: ``quality`` (the default of ``cachekit.enable``) and ``fast`` plan
TaylorSeer's schedule as its rule gives it by hand, and cache on any adapter, the block stack or not."""

import warnings

import pytest
import torch

import cachekit
from cachekit.demo import demo_call, tiny_latte_pipeline

# TaylorSeer's full steps (diffusers' rule): the first `warmup`, then s with (s - warmup - 1) % interval == 0,
# and, from the preset's window, the last 10% of the run; the steps between are forecast (X).
EXPECTED = {
    "quality": "CCC" + "XC" * 12 + "CCC",  # warm-up 3, interval 2, steps 27-29 computed
    "fast": "CC" + "X" + "CXX" * 8 + "CCC",  # warm-up 2, interval 3
}


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_preset_plans_taylorseer_lite_on_the_denoiser(preset):
    session = cachekit.enable(tiny_latte_pipeline(), preset)
    rows = dict(line.rsplit(maxsplit=1) for line in session.plan_for(30).grid().splitlines()[1:])
    assert rows == {"denoiser [uncond]": EXPECTED[preset], "denoiser [cond]": EXPECTED[preset]}


def test_the_default_is_the_quality_preset_and_caches_without_a_block_stack():
    """VACE has no block stack (its control hints enter between the blocks): the default still caches."""
    from tests.pipelines import BUILDERS, model_call

    assert cachekit.api.DEFAULT_CONFIG == "quality"
    pipe = BUILDERS["wan_vace"]()
    expected = pipe(**model_call("wan_vace", pipe, 8)).frames
    session = cachekit.enable(pipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = pipe(**model_call("wan_vace", pipe, 8)).frames
    cachekit.disable(pipe)
    assert session.report().counts()["reconstruct"] > 0 and not torch.equal(out, expected)
    assert torch.equal(pipe(**model_call("wan_vace", pipe, 8)).frames, expected)


def test_fast_computes_less_than_quality():
    pipe = tiny_latte_pipeline()
    fractions = {}
    for preset in ("quality", "fast"):
        with cachekit.enabled(pipe, preset) as session:
            pipe(**demo_call(pipe, steps=30))
            counts = session.report().counts()
        fractions[preset] = counts["compute"] / sum(counts.values())
    assert fractions["fast"] < fractions["quality"] < 1
