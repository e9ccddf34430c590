"""diffusers' modular pipelines (``ModularPipeline`` run by pipeline blocks) on tiny random
components (``tests/pipelines_modular*.py``), through ``cachekit.testing.check_adapter``: the
guider calls the model once per condition, cond first, whatever the classic pipeline of the
family does (LTX's batches CFG), and whether it runs CFG is read from the guider; Helios' chunk
and pyramid-stage loops are a run each."""

import warnings

import pytest
import torch

import cachekit
from cachekit.policy import COMPUTE
from cachekit.testing import check_adapter
from tests.pipelines import tiny_hunyuan_video15_pipeline, tiny_ltx_pipeline, tiny_wan_pipeline
from tests.pipelines_modular import BUILDERS, CALLS, modular_latents
from tests.pipelines_modular_helios import BUILDERS as HELIOS, CALLS as HELIOS_CALLS
from tests.pipelines_modular_more import BUILDERS as MORE, CALLS as MORE_CALLS
from tests.pipelines_modular_wan import BUILDERS as WAN, CALLS as WAN_CALLS

torch.set_num_threads(1)

STEPS = 6
#: The classic pipeline of each family.
CLASSIC = {"wan": tiny_wan_pipeline, "ltx": tiny_ltx_pipeline, "hunyuan_video15": tiny_hunyuan_video15_pipeline}


#: Every modular pipeline built: (builder, call, its adapter).
MODULAR = {**{family: (BUILDERS[family], CALLS[family], family) for family in BUILDERS},
           **{f"modular {family}": (HELIOS[family], HELIOS_CALLS[family], "helios") for family in HELIOS},
           **{f"modular {family}": (WAN[family], WAN_CALLS[family], "vace" if "vace" in family else "wan")
              for family in WAN}}
#: Without a stack site (VACE adds a control hint after blocks).
UNSTACKED = {"modular wan22_vace"}
#: Guidance-distilled: one call per step, checked under the ``quality`` preset.
DISTILLED = {"modular helios_pyramid_distilled"}
#: Loops (runs) per call, and steps per loop for 6 steps asked.
LOOPS = {"modular helios": [6, 6], "modular helios_pyramid": [6] * 6, "modular helios_pyramid_distilled": [12] * 3 + [6] * 3}


@pytest.mark.parametrize("family", list(MODULAR))
def test_check_adapter(family):
    """All-compute bitwise equal to uncached, executed = plan and finite under the preset and a reuse
    of every site kind, the first block entered once per planned branch (CFG-Cache skips the uncond
    call), the call order (cond first), ``sigmas=`` / ``timesteps=`` where the pipeline takes them,
    ``disable()`` bitwise; a guidance-distilled pipeline runs one branch."""
    build, call, adapter = MODULAR[family]
    distilled = family in DISTILLED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = check_adapter(build, call, steps=STEPS, config="quality" if distilled else "fastercache")
    assert result.adapter == adapter and result.branches == (("cond",) if distilled else ("uncond", "cond"))
    assert result.first_block_measured == result.first_block_planned < result.first_block_uncached
    assert {"denoiser", "attn.joint", "mlp", "block"} <= set(result.cached_nodes)
    assert ("stack" in result.cached_nodes) == (family not in UNSTACKED)
    # the Helios scheduler refuses a list of sigmas (a diffusers bug) and the pyramid takes none
    assert ("call with sigmas=: executed = plan" in result.checked) == ("helios" not in family)
    # the pyramid's CFG-Zero* guider zeroes the first steps' prediction: the call order is not probed there
    probed = not distilled and family != "modular helios_pyramid"
    assert ("call order: the cond branch steers the run" in result.checked) == probed


@pytest.mark.parametrize("family", list(LOOPS))
def test_helios_loops_are_a_run_each(family):
    """Every chunk (and pyramid stage) of a modular Helios call is a run of its own, planned for its steps."""
    build, call, _ = MODULAR[family]
    pipe = build()
    session = cachekit.enable(pipe, "quality")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = modular_latents(pipe(**call(pipe, STEPS)))
    cachekit.disable(pipe)
    assert [report.num_steps for report in session.reports()] == LOOPS[family] and torch.isfinite(out).all()


@pytest.mark.parametrize("family", list(BUILDERS))
def test_a_modular_pipeline_is_split_cond_first(family):
    """The adapter of a modular pipeline takes the guider's layout, one call per condition, cond
    first; the classic pipeline of the family keeps its own (LTX: batched ``[uncond, cond]``)."""
    pipe = BUILDERS[family]()
    adapter = cachekit.find_adapter(pipe.transformer, pipe)
    assert (adapter.cfg_layout, adapter.call_order) == ("split", ("cond", "uncond"))
    classic = CLASSIC[family]()
    assert cachekit.find_adapter(classic.transformer, classic).cfg_layout == ("batched" if family == "ltx" else "split")


def test_the_guider_tells_whether_the_run_has_an_uncond_branch():
    """At guidance 1 the guider runs the cond prediction only: the run has one branch, the attention
    reuse of the preset still runs and changes the output."""
    pipe = BUILDERS["wan"]()
    kwargs = CALLS["wan"](pipe, 10, guidance_scale=1.0)
    with torch.no_grad():
        reference = modular_latents(pipe(**kwargs))
    session = cachekit.enable(pipe, "fastercache")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = modular_latents(pipe(**CALLS["wan"](pipe, 10, guidance_scale=1.0)))
    report = session.report()
    cachekit.disable(pipe)
    assert report.branches == ("cond",)
    assert any(kind != COMPUTE for (_, site, _), kind in report.executed.items() if site.endswith("attn.joint"))
    assert torch.isfinite(out).all() and not torch.equal(out, reference)


@pytest.mark.parametrize("family", ["ltx2", "ltx25"])
def test_check_adapter_on_the_ltx2_modular_pipelines(family):
    """LTX-2's modular pipelines call the model once per prediction their guiders turn on, under the
    prediction's name: four branches, cond first; CFG-Cache skips the uncond call, the other
    passes are cached from their own outputs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = check_adapter(MORE[family], MORE_CALLS[family], steps=STEPS)
    assert result.adapter == "ltx2" and result.branches == ("uncond", "cond", "uncond_stg", "uncond_modality")
    assert result.first_block_measured == result.first_block_planned < result.first_block_uncached
    assert {"denoiser", "attn.joint", "audio.attn.joint", "block", "stack"} <= set(result.cached_nodes)
    assert "call order: the cond branch steers the run" in result.checked


@pytest.mark.parametrize("family, cfg, preset", [("cosmos3", True, "fastercache"), ("cosmos3_distilled", False, "quality"),
                                                  ("echo", False, "quality")])
def test_a_modular_pipeline_cachekit_cannot_read_runs_with_its_transformer_enabled(family, cfg, preset):
    """Echo has no scheduler, Cosmos 3's modular pipelines no guider (guidance is a call input):
    enabling the pipeline says so and what to do; the transformer enabled for the loop's steps runs
    the pipeline's calls as planned, and ``disable()`` restores bitwise."""
    pipe = MORE[family]()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = modular_latents(pipe(**MORE_CALLS[family](pipe, STEPS)))
        if family == "echo":
            with pytest.raises(cachekit.EnableError, match="has a `transformer` but no `scheduler`.*enable the transformer"):
                cachekit.enable(pipe, preset)
        else:
            cachekit.enable(pipe, preset)
            with pytest.raises(cachekit.AdapterError, match="a modular pipeline without a guider.*enable its transformer"):
                pipe(**MORE_CALLS[family](pipe, STEPS))
            cachekit.disable(pipe)
        session = cachekit.enable(pipe.transformer, preset, num_inference_steps=STEPS, cfg=cfg)
        out = modular_latents(pipe(**MORE_CALLS[family](pipe, STEPS)))
        report = session.report()
        cachekit.disable(pipe.transformer)
        assert torch.equal(modular_latents(pipe(**MORE_CALLS[family](pipe, STEPS))), reference)
    assert report.num_steps == STEPS and report.branches == (("uncond", "cond") if cfg else ("cond",))
    assert report.counts().get("reconstruct", 0) > 0 and torch.isfinite(out).all() and not torch.equal(out, reference)
