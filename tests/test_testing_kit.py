"""cachekit.testing.check_adapter on real tiny pipelines: passes for correct adapters, names what fails."""

import pytest

import cachekit
from cachekit.demo import demo_call, tiny_latte_pipeline
from cachekit.testing import AdapterCheck, check_adapter
from tests.pipelines import cogvideox_call, tiny_cogvideox15_pipeline, tiny_cogvideox_pipeline, tiny_wan_pipeline, wan_call


def latte_call(pipe, steps):
    return demo_call(pipe, steps=steps)


def test_latte_passes_and_the_result_reads_clearly():
    result = check_adapter(tiny_latte_pipeline, latte_call)
    assert isinstance(result, AdapterCheck) and result.ok and result.adapter == "latte"
    assert set(result.cached_nodes) == {"denoiser", "block", "attn.spatial", "attn.temporal", "attn.cross", "mlp", "stack"}
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
    if build is tiny_wan_pipeline:  # split: no call carries two branches, nothing to cut
        assert result.one_branch_sites == () and "one-branch calls" not in result.checked
        assert result.notes == ("one-branch calls: not probed: the split layout calls the model once per branch, so "
                                "no site call carries two branches and no input is cut",)
        assert "note  one-branch calls: not probed" in str(result)
    else:  # CogVideoX: its blocks take temb, its attentions the text by keyword, its MLPs one input by position
        assert set(result.one_branch_sites) == {"stack"} | {f"blocks.{i}{s}" for i in range(2) for s in ("", ".attn.joint", ".mlp")}


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
        assert any(f.startswith("call order: the cond branch steers the run: nudging the output the adapter calls "
                                "'uncond' moves") and f.endswith("set call_order = ('cond', 'uncond') (the order called)")
                   for f in result.failures), result.failures
    finally:
        cachekit.reload_plugins(keep_code=False)


def test_a_short_batch_list_does_not_narrow_the_detected_inputs():
    """An adapter naming too few batch inputs once broke every partial-branch call ("The size of
    tensor a ..."): declarations now only add to the inputs detected from dim 0, so it passes,
    one-branch calls of every site included."""
    from cachekit.adapters.latte import LatteAdapter

    class Leaky(LatteAdapter):
        name = "test-leaky"
        model_classes = ("LeakyLatte",)
        batch_kwargs = ("hidden_states",)  # leaves out encoder_hidden_states and timestep of the blocks

    from diffusers import LatteTransformer3DModel

    class LeakyLatte(LatteTransformer3DModel):
        """Latte under a class name only the leaky adapter claims."""

    def build():
        pipe = tiny_latte_pipeline()
        pipe.transformer.__class__ = LeakyLatte
        return pipe

    cachekit.register_adapter(Leaky)
    try:
        result = check_adapter(build, latte_call)
    finally:
        cachekit.reload_plugins(keep_code=False)
    assert result.ok and len(result.one_branch_sites) == 15  # the stack, 2 layers x (2 blocks + 5 attentions and MLPs)


def broken_cogvideox(base, **classvars):
    """``base`` (a tiny CogVideoX pipeline builder) whose transformer only an adapter with ``classvars``
    claims; registers that adapter (``cachekit.reload_plugins(keep_code=False)`` drops it)."""
    from diffusers import CogVideoXTransformer3DModel

    from cachekit.adapters.cogvideox import CogVideoXAdapter

    model_class = type("BrokenCogVideoX", (CogVideoXTransformer3DModel,), {})
    adapter = type("Broken", (CogVideoXAdapter,), {"name": "test-broken", "model_classes": ("BrokenCogVideoX",),
                                                    **classvars})
    cachekit.register_adapter(adapter)

    def build():
        pipe = base()
        pipe.transformer.__class__ = model_class
        return pipe

    return build


def only_listed(names):
    """``Adapter.batch_inputs_of`` as a complete list of batch inputs (cachekit's rule before it
    detected the rest from dim 0): every other input of the site is passed whole."""
    from cachekit.values import BatchInputs

    def batch_inputs_of(self, site):
        rule = type(self).__mro__[1].batch_inputs_of(self, site)
        return BatchInputs(rule.where, rule.params, names, set(rule.params) - set(names))

    return batch_inputs_of


def test_one_branch_probe_names_a_per_sample_input_left_out_of_the_batch_list():
    """The reported CogVideoX bug: its adapter listed the model's inputs, and its blocks' ``temb``
    was passed whole to a block computing one branch. The probe reports the site and the input
    instead of crashing, and goes on with the other sites."""
    build = broken_cogvideox(tiny_cogvideox_pipeline, batch_inputs_of=only_listed(
        ("hidden_states", "encoder_hidden_states", "timestep", "timestep_cond")))
    try:
        result = check_adapter(build, cogvideox_call, raise_on_failure=False)
    finally:
        cachekit.reload_plugins(keep_code=False)
    failures = [f for f in result.failures if f.startswith("one-branch calls")]
    assert not result.ok and failures == list(result.failures) and len(failures) == 2
    for i, failure in enumerate(failures):
        assert failure.startswith(f"one-branch calls: site 'blocks.{i}' at step 2, cond computing while uncond is "
                                  "reused in the same call: the call raised AdapterError: residual site")
        assert ("input 'temb' (2 rows along dim 0 for a batch of 2) carries the CFG branches but was passed whole; "
                "cut, it gives the uncached rows") in failure
    # the attention and MLP sites take no temb: probed both ways round once the blocks are out
    assert set(result.one_branch_sites) == {"stack", "blocks.0.attn.joint", "blocks.0.mlp", "blocks.1.attn.joint", "blocks.1.mlp"}
    assert "FAIL  one-branch calls: site 'blocks.0'" in str(result)


def test_one_branch_probe_names_a_shared_input_that_was_cut():
    """CogVideoX 1.5's rotary table has one row per video token (32 here, a multiple of the batch):
    declared as carrying the branches, it is cut, and the probe says to declare it shared."""
    build = broken_cogvideox(tiny_cogvideox15_pipeline, shared_kwargs=None, batch_kwargs=("image_rotary_emb",))
    try:
        result = check_adapter(build, cogvideox_call, raise_on_failure=False)
    finally:
        cachekit.reload_plugins(keep_code=False)
    probe = [f for f in result.failures if f.startswith("one-branch calls")]
    assert {f.split("'")[1] for f in probe} == {"blocks.0", "blocks.1", "blocks.0.attn.joint", "blocks.1.attn.joint"}
    assert all("input 'image_rotary_emb' (32 rows along dim 0) is shared by the CFG branches but was cut; passed "
               "whole, it gives the uncached rows: declare it in the adapter's shared_kwargs" in f for f in probe)
    assert set(result.one_branch_sites) == {"stack", "blocks.0.mlp", "blocks.1.mlp"}


def test_the_stack_is_skipped_on_its_own_inputs_and_a_wrong_span_is_named():
    from cachekit.adapters.latte import LatteAdapter

    assert "block stack skipped on its own inputs" in check_adapter(tiny_latte_pipeline, latte_call).checked

    class WholeListLatte(LatteAdapter):  # the stack from the first spatial block: its ends see two layouts
        name = "latte-whole-stack"

        def stack_blocks(self, sites):
            return [s for s in sites if s.kind == "block"]

    result = check_adapter(tiny_latte_pipeline, latte_call, adapter=WholeListLatte, raise_on_failure=False)
    assert not result.ok
    assert any(f.startswith("block stack skipped on its own inputs: the stack raised AdapterError") for f in result.failures)


def test_a_split_spec_on_a_batched_pipeline_is_reported_not_crashed():
    """The Latte spec declared split: each batched call is taken for one branch, so runs do not go as
    planned (or never end); the kit reports the failures instead of raising from inside."""
    from tests.test_generic import LATTE_SPEC
    from cachekit.config import tomllib

    spec = tomllib.loads(LATTE_SPEC.replace('cfg_layout = "batched"', 'cfg_layout = "split"'))["adapter"]
    result = check_adapter(tiny_latte_pipeline, latte_call, adapter=spec, raise_on_failure=False)
    assert not result.ok
    assert any("executed = plan" in f or "did not end as planned" in f for f in result.failures), result.failures


def test_a_batched_call_order_the_wrong_way_round_fails():
    """Latte concatenates [uncond, cond]; an adapter declaring ("cond", "uncond") passes every other
    check, but nudging the half it calls 'uncond' moves the result further than the half it calls
    'cond', which guidance > 1/2 never does."""
    from diffusers import LatteTransformer3DModel

    from cachekit.adapters.latte import LatteAdapter

    swapped = type("SwappedLatte", (LatteAdapter,), {"name": "test-swapped", "model_classes": ("SwappedLatte",),
                                                     "call_order": ("cond", "uncond")})
    model_class = type("SwappedLatte", (LatteTransformer3DModel,), {})

    def build():
        pipe = tiny_latte_pipeline()
        pipe.transformer.__class__ = model_class
        return pipe

    assert "call order: the cond branch steers the run" in check_adapter(tiny_latte_pipeline, latte_call).checked
    cachekit.register_adapter(swapped)
    try:
        result = check_adapter(build, latte_call, raise_on_failure=False)
    finally:
        cachekit.reload_plugins(keep_code=False)
    assert [f.split(":")[0] for f in result.failures] == ["call order"]
    assert "the branches lie the other way round; set call_order = ('uncond', 'cond') (the order along the batch)" \
        in result.failures[0]


def test_a_pipeline_returning_a_tensor_passes_and_a_misused_call_kwargs_is_named():
    """A pipeline whose call returns the latents tensor itself is read as such; a call_kwargs that
    calls the pipeline (returning its output) or asks for decoded frames gets a hint that fits."""
    from diffusers import LattePipeline

    class TensorLatte(LattePipeline):
        def __call__(self, **kwargs):
            return super().__call__(**kwargs).frames

    def build():
        pipe = tiny_latte_pipeline()
        pipe.__class__ = TensorLatte
        return pipe

    assert check_adapter(build, latte_call, steps=4).ok
    with pytest.raises(TypeError, match=r"^call_kwargs\(pipe, steps\) returned a LattePipelineOutput, not a dict; "
                                        r"return the keyword arguments of the pipeline call"):
        check_adapter(tiny_latte_pipeline, lambda pipe, steps: pipe(**latte_call(pipe, steps)), steps=4)
    with pytest.raises(TypeError, match=r"^the pipeline returned a LattePipelineOutput whose frames is a ndarray, not "
                                        r"latents; call_kwargs must ask for output_type='latent'"):
        check_adapter(tiny_latte_pipeline, lambda pipe, steps: {**latte_call(pipe, steps), "output_type": "np"}, steps=4)
