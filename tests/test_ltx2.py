"""LTX-2 and runs of more than two branches.

The real diffusers 0.42.1 ``LTX2Pipeline`` and ``LTX2ImageToVideoPipeline``, built offline from tiny
random parts (tests/pipelines_ltx2.py), call the transformer up to three times a step: [uncond, cond]
in one call, then the spatio-temporal-guidance pass and the modality-isolation pass, each under its
``cache_context``. The run has four branches; CFG-Cache rebuilds only what the branch rule lets it
(docs/architecture.md, "Branches"). The core's handling of N branches is tested on its own below
(plans, the rule, the run clock, a bare transformer's hand-written four-branch loop)."""

from __future__ import annotations

import types
import warnings

import attrs
import pytest
import torch

import cachekit
from cachekit.errors import AdapterError, EnableError, FieldError, PlanError
from cachekit.planner import build_plan
from cachekit.policy import Action, Policy, Ref
from cachekit.sites import Selector
from cachekit.testing import check_adapter
from tests.pipelines_ltx2 import ltx2_call, tiny_ltx2_i2v_pipeline, tiny_ltx2_pipeline
from tests.test_plan import synthetic_sites

FOUR = ("uncond", "cond", "uncond_stg", "uncond_modality")
STEPS = 8


def call(pipe, steps=STEPS, **overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # idle-policy notes
        return pipe(**{**ltx2_call(pipe, steps), **overrides})


#: The denoiser calls of an LTX-2 step, by cache_context name, in the pipeline's order.
CALLS = ("cond_uncond", "uncond_stg", "uncond_modality")


class BlockRows:
    """The rows entering the first block (the branches computed) in each denoiser call, summed per
    call of a step (the pipeline makes the three calls of CALLS in that order every step)."""

    def __init__(self, pipe):
        self.model, self.calls, self.rows = pipe.transformer, -1, {}

    def __enter__(self):
        def call(module, args, kwargs):
            self.calls += 1

        def block(module, args, kwargs):
            name = CALLS[self.calls % len(CALLS)]
            self.rows[name] = self.rows.get(name, 0) + kwargs["hidden_states"].shape[0]

        self.handles = [self.model.register_forward_pre_hook(call, with_kwargs=True),
                        self.model.transformer_blocks[0].register_forward_pre_hook(block, with_kwargs=True)]
        return self.rows

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


# -- the real pipelines through check_adapter ----------------------------------------------------


@pytest.mark.parametrize("build", [tiny_ltx2_pipeline, tiny_ltx2_i2v_pipeline], ids=["t2v", "i2v"])
def test_check_adapter_on_the_ltx2_pipelines(build):
    result = check_adapter(build, ltx2_call, steps=STEPS)
    assert result.adapter == "ltx2" and result.branches == FOUR
    # every kind, the audio stream's included, was reused or rebuilt, and executed = plan throughout
    assert {"audio.attn.joint", "audio.attn.cross", "audio.mlp", "attn.joint", "mlp", "block", "stack"} <= set(
        result.cached_nodes)
    # the [uncond, cond] call was cut at every site, each branch computing beside the other reused
    sites = [s.name for s in cachekit.find_adapter(build().transformer).sites()[1:]] + ["stack"]
    assert sorted(result.one_branch_sites) == sorted(sites)
    # three calls a step carry four branches: 4 rows per step enter the first block uncached
    assert result.first_block_uncached == len(FOUR) * STEPS
    assert result.first_block_measured == result.first_block_planned < result.first_block_uncached


# -- four branches in a run, and what cfg_cache may rebuild ---------------------------------------


def test_a_call_shows_four_branches_and_cfg_cache_rebuilds_uncond_alone():
    pipe = tiny_ltx2_pipeline()
    with BlockRows(pipe) as rows:
        reference = call(pipe)
    assert rows == {"cond_uncond": 2 * STEPS, "uncond_stg": STEPS, "uncond_modality": STEPS}

    config = {"policy": [{"type": "cfg_cache", "interval": 2, "window": {"start": 0.0, "end": 1.0}}]}
    session = cachekit.enable(pipe, config)
    with BlockRows(pipe) as rows:
        out = call(pipe)
    report = session.report()
    cachekit.disable(pipe)

    assert report.branches == FOUR and "branches uncond, cond, uncond_stg, uncond_modality" in report.text()
    by_branch = report.counts_by_branch()
    rebuilt = [s for s in range(STEPS) if s % 2]  # interval 2 from the first step: odd steps rebuild uncond
    assert by_branch["uncond"] == {"compute": STEPS - len(rebuilt), "reconstruct": len(rebuilt)}
    for branch in ("cond", "uncond_stg", "uncond_modality"):  # never rebuilt from cond, never reused
        assert by_branch[branch] == {"compute": STEPS}
    assert report.to_dict()["executed_by_branch"] == by_branch and "by branch: uncond" in report.text()
    # the [uncond, cond] call computed cond alone at the rebuilt steps; the perturbed passes every step
    assert rows == {"cond_uncond": 2 * STEPS - len(rebuilt), "uncond_stg": STEPS, "uncond_modality": STEPS}
    assert out.frames.shape == reference.frames.shape and torch.isfinite(out.frames).all()
    assert not torch.equal(out.frames, reference.frames) and torch.isfinite(out.audio).all()


def test_cfg_cache_rebuilds_a_perturbed_pass_only_where_rebuild_names_it():
    pipe = tiny_ltx2_pipeline()
    config = {"policy": [{"type": "cfg_cache", "interval": 2, "window": {"start": 0.0, "end": 1.0},
                          "rebuild": ["uncond", "uncond_stg"]}]}
    session = cachekit.enable(pipe, config)
    with BlockRows(pipe) as rows:
        call(pipe)
    by_branch = session.report().counts_by_branch()
    plan = session.plan
    cachekit.disable(pipe)
    half = STEPS // 2
    for branch in ("uncond", "uncond_stg"):
        assert by_branch[branch] == {"compute": half, "reconstruct": half}
        assert all(plan.action((s, "denoiser", branch)).sources[-1] == (s, "denoiser", "cond")
                   for s in range(1, STEPS, 2))  # rebuilt from this step's cond
    assert by_branch["cond"] == by_branch["uncond_modality"] == {"compute": STEPS}
    assert rows == {"cond_uncond": 2 * STEPS - half, "uncond_stg": half, "uncond_modality": STEPS}
    # a rebuilt step's cond output is read in its own call (uncond) and in the next (uncond_stg): it is
    # kept for the later call
    assert plan.stored()[(1, "denoiser", "cond")] == (1, "denoiser", "uncond_stg")


def test_without_cfg_the_run_has_cond_and_the_perturbed_passes():
    pipe = tiny_ltx2_pipeline()
    session = cachekit.enable(pipe, "fastercache")
    with pytest.warns(UserWarning, match=r"policy 'cfg_cache' made no decision other than compute in this run: "
                                         r"the run has no uncond branch \(guidance is off\)"):
        pipe(**{**ltx2_call(pipe, STEPS), "guidance_scale": 1.0, "audio_guidance_scale": 1.0})
    report = session.report()
    cachekit.disable(pipe)
    assert report.branches == ("cond", "uncond_stg", "uncond_modality")
    assert {b: c.get("reconstruct", 0) > 0 for b, c in report.counts_by_branch().items()} == dict.fromkeys(
        report.branches, True)  # fastercache's attention rebuilds act on every branch, each from its own


def test_audio_sites_are_a_site_set_of_their_own():
    sites = cachekit.find_adapter(tiny_ltx2_pipeline().transformer).sites()
    audio = [s.name for s in Selector(kinds=["audio"]).select(sites)]
    assert audio == [f"blocks.{i}.audio.{k}" for i in range(2) for k in ("attn.joint", "attn.cross", "mlp")]
    assert not any(".audio." in s.name for s in Selector(kinds=["attn"]).select(sites))
    assert sites[0].layouts == ("BLC", "BTC")


def test_cfg_fft_on_a_time_sequence_weights_the_whole_bias_with_w_low():
    """Audio tokens ("BTC") are frames of 1 x 1: their spectrum is the low band alone."""
    from cachekit.reconstruct import cfg_fft

    g = torch.Generator().manual_seed(0)
    uncond, cond, now = (torch.randn(2, 5, 6, generator=g, dtype=torch.float64) for _ in range(3))
    for exact in (False, True):
        out = cfg_fft([uncond, cond, now], w_low=1.5, w_high=9.0, layout="BTC", exact_bands=exact)
        assert out.shape == now.shape and torch.allclose(out, now + 1.5 * (uncond - cond))


# -- the branch rule, plans and the clock with N branches ------------------------------------------


@attrs.frozen(kw_only=True)
class FromCond(Policy):
    """Reuses this step's cond output for its branches, declaring the pair or not."""

    type_name = "test-from-cond"
    default_branches = ("uncond_stg",)
    declared: bool = False

    def derives_from(self, branch):
        return ("cond",) if self.declared else ()

    def plan_site(self, site, branch, steps, run):
        return {s: Action(kind="reuse", refs=(Ref("cond", back=0),)) for s in steps if s % 2}


def test_a_cross_branch_read_needs_the_policy_to_declare_it():
    sites = synthetic_sites(1)
    calls = [("uncond", "cond"), ("uncond_stg",), ("uncond_modality",)]
    selector = {"kinds": ["denoiser"]}
    with pytest.raises(PlanError, match=r"policy 'test-from-cond' at denoiser \[uncond_stg\] reads the 'cond' branch, "
                                        r"but a branch is built from its own outputs unless its policy declares"):
        build_plan([FromCond(sites=selector)], sites, FOUR, 4, calls=calls)
    plan = build_plan([FromCond(sites=selector, declared=True)], sites, FOUR, 4, calls=calls)
    assert plan.action((1, "denoiser", "uncond_stg")).sources == ((1, "denoiser", "cond"),)
    assert plan.calls == tuple(calls)
    plan.compile(FOUR, split=True)  # cond is called before uncond_stg
    stg_first = [("uncond_stg",), ("uncond", "cond"), ("uncond_modality",)]
    plan = build_plan([FromCond(sites=selector, declared=True)], sites, FOUR, 4, calls=stg_first)
    with pytest.raises(PlanError, match=r"the model calls the 'cond' branch after 'uncond_stg'"):
        plan.compile(("uncond_stg", "uncond", "cond", "uncond_modality"), split=True)


def test_two_branch_plans_are_unchanged_by_the_call_groups():
    """The runtime now passes the adapter's calls to the planner: for one or two branches they are
    the layout's own, and the plan is the same node for node."""
    sites = synthetic_sites(2)
    sites[0] = attrs.evolve(sites[0], layout="BCFHW")  # for cfg_cache
    policies = cachekit.load_config("fastercache").policies
    for layout, calls in (("batched", [("uncond", "cond")]), ("split", [("cond",), ("uncond",)])):
        plain = build_plan(policies, sites, ("uncond", "cond"), 20, cfg_layout=layout)
        grouped = build_plan(policies, sites, ("uncond", "cond"), 20, cfg_layout=layout, calls=calls)
        assert plain.to_dict() == grouped.to_dict()


def test_cfg_cache_rebuild_is_validated():
    from cachekit.policies.cfg_cache import CfgCache

    for bad in (["cond"], [], ["uncond", "uncond"], ["un-cond"], "uncond"):
        with pytest.raises(FieldError, match="rebuild"):
            CfgCache(rebuild=bad)
    with pytest.raises(FieldError, match=r'\["uncond"\] with compat = "diffusers"'):
        CfgCache(rebuild=["uncond", "uncond_stg"], compat="diffusers", window={"start": 901, "end": 99, "unit": "timestep"})
    assert CfgCache(rebuild=["uncond_stg", "uncond"]).branches(FOUR) == ("uncond", "uncond_stg")


def test_the_clock_places_calls_of_call_groups_by_their_cache_context():
    from cachekit.clock import RunClock

    adapter = cachekit.find_adapter(tiny_ltx2_pipeline().transformer)
    clock = RunClock(adapter.model, adapter.cfg_layout, adapter.call_order, None, None, steps=2, cfg=list(FOUR),
                     timestep_input="sigma", calls=adapter.step_calls)
    ticks = []
    for _ in range(2):
        for name in ("cond_uncond", "uncond_modality", "uncond_stg"):  # named: the order of the calls is free
            clock.context = types.SimpleNamespace(name=name)
            ticks.append(clock.tick((), {}))
            clock.tock()
    assert [(t.step, t.branches) for t in ticks] == [
        (0, ("uncond", "cond")), (0, ("uncond_modality",)), (0, ("uncond_stg",)),
        (1, ("uncond", "cond")), (1, ("uncond_modality",)), (1, ("uncond_stg",))]
    assert [t.branch for t in ticks[:3]] == [None, "uncond_modality", "uncond_stg"] and not clock.active
    assert ticks[0].start.branches == FOUR


def test_adapter_call_groups_are_checked():
    class Bad(type(cachekit.find_adapter(tiny_ltx2_pipeline().transformer))):
        call_groups = (("cond_uncond", ("cond", "uncond")), ("uncond_stg", ("uncond_stg",)),
                       ("uncond_modality", ("uncond_modality",)))

    with pytest.raises(AdapterError, match=r"call_groups .* is invalid; list the branches of call_order \('uncond', "
                                           r"'cond', 'uncond_stg', 'uncond_modality'\) once each, in that order"):
        Bad(tiny_ltx2_pipeline().transformer).validate()


# -- a bare transformer in a hand-written four-branch loop -----------------------------------------


def hand_loop(model, steps=6):
    """LTX-2's guidance written out: [uncond, cond] batched, then the STG and modality passes."""
    g = torch.Generator().manual_seed(3)
    video, audio = torch.randn(1, 48, 4, generator=g), torch.randn(1, 5, 4, generator=g)
    text, negative = torch.randn(1, 8, 16, generator=g), 0.1 * torch.randn(1, 8, 16, generator=g)
    grid = dict(num_frames=3, height=4, width=4, audio_num_frames=5, return_dict=False)
    for t in torch.linspace(1000, 100, steps):
        with model.cache_context("cond_uncond"):
            both = t.expand(2)
            v, a = model(hidden_states=torch.cat([video] * 2), audio_hidden_states=torch.cat([audio] * 2),
                         encoder_hidden_states=torch.cat([negative, text]),
                         audio_encoder_hidden_states=torch.cat([negative, text]), timestep=both, sigma=both, **grid)
        v_uncond, v_cond = v.chunk(2)
        a_uncond, a_cond = a.chunk(2)
        one = t.expand(1)
        common = dict(hidden_states=video, audio_hidden_states=audio, encoder_hidden_states=text,
                      audio_encoder_hidden_states=text, timestep=one, sigma=one, **grid)
        with model.cache_context("uncond_stg"):
            v_stg, a_stg = model(**common, spatio_temporal_guidance_blocks=[1])
        with model.cache_context("uncond_modality"):
            v_mod, a_mod = model(**common, isolate_modalities=True)
        v_guided = v_cond + 2 * (v_cond - v_uncond) + (v_cond - v_stg) + 2 * (v_cond - v_mod)
        a_guided = a_cond + 2 * (a_cond - a_uncond) + (a_cond - a_stg) + 2 * (a_cond - a_mod)
        video, audio = video - 0.1 * v_guided, audio - 0.1 * a_guided
    return video, audio


def test_a_bare_transformer_runs_four_branches_named_in_enable():
    model = tiny_ltx2_pipeline().transformer
    with torch.no_grad():
        reference = hand_loop(model)
        everything = {"policy": [{"type": "reuse", "interval": 1, "sites": {"kinds": ["denoiser", "block", "attn",
                                                                                          "mlp", "audio"]}}]}
        with cachekit.enabled(model, everything, num_inference_steps=6, cfg=list(FOUR)) as session, \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # interval 1: the policy computes by design
            hooked = hand_loop(model)
        assert session.report().branches == FOUR
        assert all(torch.equal(h, r) for h, r in zip(hooked, reference))  # every site hooked, all computed

        config = {"policy": [{"type": "cfg_cache", "interval": 3, "window": {"start": 0.0, "end": 1.0},
                              "rebuild": ["uncond", "uncond_modality"]}]}
        with cachekit.enabled(model, config, num_inference_steps=6, cfg=FOUR) as session:
            cached = hand_loop(model)
        by_branch = session.report().counts_by_branch()
    assert by_branch["uncond"] == by_branch["uncond_modality"] == {"compute": 2, "reconstruct": 4}
    assert by_branch["cond"] == by_branch["uncond_stg"] == {"compute": 6}
    assert all(torch.isfinite(c).all() and not torch.equal(c, r) for c, r in zip(cached, reference))


def test_branches_named_in_enable_are_checked():
    model = tiny_ltx2_pipeline().transformer
    with pytest.raises(EnableError, match=r"cfg: 'uncond_sgt' is not a branch of this model; its adapter calls "
                                          r"'uncond', 'cond', 'uncond_stg', 'uncond_modality'"):
        cachekit.enable(model, "cfg_cache", num_inference_steps=4, cfg=["uncond", "cond", "uncond_sgt"])
    with pytest.raises(EnableError, match=r"cfg \('uncond',\) has no 'cond'; every run has the conditional branch"):
        cachekit.enable(model, "cfg_cache", num_inference_steps=4, cfg=["uncond"])
    with pytest.raises(EnableError, match=r"pass cfg only for a bare transformer"):
        cachekit.enable(tiny_ltx2_pipeline(), "cfg_cache", cfg=list(FOUR))


#: LTX-2 pipelines whose calls append tokens past the video grid (tests/pipelines_ltx2_more.py).
APPENDED = ["ltx2_condition", "ltx2_hdr", "ltx2_in_context"]


#: The branches of each pipeline's runs.
MORE_BRANCHES = {**{family: ("uncond", "cond", "uncond_stg", "uncond_modality") for family in APPENDED},
                 "ltx2_dfr": ("cond",), "ltx2_dfr_refine": ("cond",), "ltx_long": ("uncond", "cond")}


@pytest.mark.parametrize("family", list(MORE_BRANCHES))
def test_check_adapter_quality_on_more_ltx_pipelines(family):
    """The condition, HDR and in-context pipelines (four branches; keyframe or reference tokens
    appended to the video's), the DFR pipelines (no guidance: one branch; the refine round one loop
    per temporal tile, each over the ancestral scheduler's timesteps but the terminal 0) and
    LTX-Video's long multi-prompt pipeline (a loop per temporal window over ``timesteps[:-1]``, its
    grid in ``video_coords`` only) under the ``quality`` preset: executed = plan, the first block
    entered once per planned compute, a reuse of every site kind, ``disable()`` bitwise."""
    from tests.pipelines_ltx2_more import BUILDERS, CALLS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = check_adapter(BUILDERS[family], CALLS[family], steps=6, config="quality")
    assert result.branches == MORE_BRANCHES[family]
    assert result.first_block_measured == result.first_block_planned < result.first_block_uncached


@pytest.mark.parametrize("family", [*APPENDED, "ltx_long"])
def test_cfg_cache_refuses_tokens_past_the_grid_in_one_line(family):
    """Tokens appended past the video grid (the long pipeline's image-conditioned frame) lie on no
    frame: CFG-Cache's rebuild says so and what runs instead, and the pipeline stays usable."""
    from tests.pipelines_ltx2_more import BUILDERS, CALLS

    pipe = BUILDERS[family]()
    cachekit.enable(pipe, "fastercache")
    message = (r"384 tokens lie on no frame grid .* leave cfg_cache out" if family == "ltx_long" else
               r"video tokens for a grid of 3 x 16 x 16: tokens appended past the grid .* leave cfg_cache out")
    with pytest.raises(cachekit.AdapterError, match=message):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe(**CALLS[family](pipe, 6))
    cachekit.disable(pipe)
