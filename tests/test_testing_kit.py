"""cachekit.testing.check_adapter on real tiny pipelines: passes for correct adapters, names what fails."""

import pytest

import cachekit
from cachekit.demo import demo_call, tiny_latte_pipeline
from cachekit.testing import AdapterCheck, check_adapter
from tests.pipelines import cogvideox_call, tiny_cogvideox_pipeline, tiny_wan_pipeline, wan_call


def latte_call(pipe, steps):
    return demo_call(pipe, steps=steps)


def test_latte_passes_and_the_result_reads_clearly():
    result = check_adapter(tiny_latte_pipeline, latte_call)
    assert isinstance(result, AdapterCheck) and result.ok and result.adapter == "latte"
    assert set(result.cached_nodes) == {"denoiser", "block", "attn.spatial", "attn.temporal", "attn.cross", "mlp"}
    assert all(n > 0 for n in result.cached_nodes.values())
    # CFG-Cache skips the uncond branch: the first block is entered less often than uncached
    assert result.first_block == "blocks.0.spatial"
    assert result.first_block_measured == result.first_block_planned < result.first_block_uncached == 20
    text = str(result)
    assert "ok    all-compute bitwise equal to uncached" in text and "FAIL" not in text


@pytest.mark.parametrize("build, call, first", [(tiny_wan_pipeline, wan_call, "blocks.0"),
                                                (tiny_cogvideox_pipeline, cogvideox_call, "blocks.0")])
def test_split_and_joint_attention_adapters_pass(build, call, first):
    result = check_adapter(build, call)
    assert result.ok and result.first_block == first
    assert result.first_block_measured == result.first_block_planned < result.first_block_uncached


def test_timesteps_call_is_checked_where_the_pipeline_and_scheduler_take_them():
    from diffusers import DDPMScheduler

    def build():
        pipe = tiny_latte_pipeline()
        pipe.scheduler = DDPMScheduler()  # its set_timesteps takes custom timesteps
        return pipe

    result = check_adapter(build, latte_call)
    assert "call with timesteps=: executed = plan" in result.checked
    assert "call with timesteps=: steps" in result.checked
    assert not any("sigmas" in name for name in result.checked)  # LattePipeline takes no sigmas


def test_a_wrong_call_order_is_named():
    """Wan calls cond first; an adapter claiming uncond first cannot rebuild uncond from this step's cond."""
    from cachekit.adapters.wan import WanAdapter

    class Backwards(WanAdapter):
        name = "test-wan-backwards"
        model_classes = ("BackwardsWan",)
        call_order = ("uncond", "cond")

    from diffusers import WanTransformer3DModel

    class BackwardsWan(WanTransformer3DModel):
        """Wan under a class name only the backwards adapter claims."""

    def build():
        pipe = tiny_wan_pipeline()
        pipe.transformer.__class__ = BackwardsWan
        return pipe

    cachekit.register_adapter(Backwards)
    try:
        with pytest.raises(AssertionError, match=r"check_adapter failed for adapter 'test-wan-backwards': config "
                                                 r"'fastercache': the cached call raised PlanError: .*call order uncond, cond"):
            check_adapter(build, wan_call)
        result = check_adapter(build, wan_call, raise_on_failure=False)
        assert not result.ok and "FAIL  config 'fastercache'" in str(result)
    finally:
        cachekit.reload_plugins(keep_code=False)


def test_too_few_batch_inputs_are_reported():
    """An adapter declaring too few batch inputs: the partial-branch calls break, and the kit says where."""
    from cachekit.adapters.latte import LatteAdapter

    class Leaky(LatteAdapter):
        name = "test-leaky"
        model_classes = ("LeakyLatte",)
        batch_kwargs = ("hidden_states",)  # misses encoder_hidden_states and timestep of the blocks

    from diffusers import LatteTransformer3DModel

    class LeakyLatte(LatteTransformer3DModel):
        """Latte under a class name only the leaky adapter claims."""

    def build():
        pipe = tiny_latte_pipeline()
        pipe.transformer.__class__ = LeakyLatte
        return pipe

    cachekit.register_adapter(Leaky)
    try:
        result = check_adapter(build, latte_call, raise_on_failure=False)
    finally:
        cachekit.reload_plugins(keep_code=False)
    assert result.failures == tuple(f for f in result.failures if "raised RuntimeError" in f) != ()
    assert result.failures[0].startswith("config 'fastercache': the cached call raised RuntimeError: The size of tensor")


def test_a_split_spec_on_a_batched_pipeline_is_reported_not_crashed():
    """The Latte spec declared split: each batched call is taken for one branch, so runs do not go as
    planned (or never end); the kit reports the failures instead of raising from inside."""
    from tests.test_generic import LATTE_SPEC
    from cachekit.config import tomllib

    spec = tomllib.loads(LATTE_SPEC.replace('cfg_layout = "batched"', 'cfg_layout = "split"'))["adapter"]
    result = check_adapter(tiny_latte_pipeline, latte_call, adapter=spec, raise_on_failure=False)
    assert not result.ok
    assert any("executed = plan" in f or "did not end as planned" in f for f in result.failures), result.failures
