"""The CogVideoX adapter on a real tiny CogVideoXPipeline: plans execute exactly, and the diffusers-
compatible policies reproduce diffusers' own FasterCache and PAB hooks."""

import warnings

import attrs
import pytest
import torch

import cachekit
from cachekit import Action, Policy
from tests.pipelines import cogvideox_call, tiny_cogvideox_pipeline
from tests.recording import Recorder, check_cached_values

STEPS = 16  # DDIM 'leading' timesteps 930, 868, ..., 62, 0
ATTN1 = ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]


@pytest.fixture
def pipe():
    return tiny_cogvideox_pipeline()


@pytest.fixture(scope="module")
def reference():
    """Uncached final latents by (seed, batch)."""
    pipe, cache = tiny_cogvideox_pipeline(), {}

    def get(seed: int = 0, batch: int = 1) -> torch.Tensor:
        if (seed, batch) not in cache:
            cache[seed, batch] = run(pipe, seed=seed, batch=batch)
        return cache[seed, batch]

    return get


def run(pipe, steps: int = STEPS, **kwargs) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pipe(**cogvideox_call(pipe, steps, **kwargs)).frames


def hooked(pipe, hook):
    """Names of the transformer's modules that carry the diffusers hook ``hook``."""
    return sorted(name for name, m in pipe.transformer.named_modules()
                  if "_diffusers_hook" in m.__dict__ and hook in m._diffusers_hook.hooks)


def executed_matches_plan(session):
    report = session.report()
    assert report.executed == {node: a.kind for node, a in session.plan.nodes() if a.kind != "skip"}
    return report


def timesteps(lo, hi):
    return {"start": lo, "end": hi, "unit": "timestep"}


def test_adapter_sites_and_example_call(pipe):
    session = cachekit.enable(pipe, "fastercache")
    assert type(session.adapter).__name__ == "CogVideoXAdapter"
    sites = session.adapter.sites()
    assert [(s.name, s.kind, s.module_path, s.parent) for s in sites[:4]] == [
        ("denoiser", "denoiser", "", None),
        ("blocks.0", "block", "transformer_blocks.0", "denoiser"),
        ("blocks.0.attn.joint", "attn.joint", "transformer_blocks.0.attn1", "blocks.0"),
        ("blocks.0.mlp", "mlp", "transformer_blocks.0.ff", "blocks.0"),
    ]
    assert len(sites) == 7 and sites[0].layout == "BFCHW" and [s.residual for s in sites].count(True) == 2
    assert not any(session.adapter.module(s).is_cross_attention for s in sites if s.kind == "attn.joint")
    plan = session.plan_for(STEPS, cfg=True)
    counts = plan.counts()  # the plan skips work: counted nodes, not a timed speedup
    assert counts["reconstruct"] > 0 and counts["compute"] < sum(counts.values()) - counts["skip"]
    assert session.predict(plan).peak_cache_bytes > 0  # dry run on example_call
    # the pipeline has no do_classifier_free_guidance property: CFG is guidance_scale > 1
    run(pipe, steps=4, guidance_scale=1.0)
    assert session.report().branches == ("cond",)
    run(pipe, steps=4)
    assert session.report().branches == ("uncond", "cond")
    cachekit.disable(pipe)


@pytest.mark.parametrize("extra", [{}, {"use_rotary_positional_embeddings": True},
                                   {"use_rotary_positional_embeddings": True, "patch_size_t": 2, "ofs_embed_dim": 8}],
                         ids=["sincos", "rotary", "v1.5"])
def test_example_call_runs_every_variant(extra):
    from diffusers import CogVideoXTransformer3DModel

    from cachekit.adapters.cogvideox import CogVideoXAdapter

    model = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                        time_embed_dim=8, text_embed_dim=8, num_layers=1, sample_width=4, sample_height=4,
                                        sample_frames=9, max_text_seq_length=4, **extra)
    args, kwargs = CogVideoXAdapter(model).example_call(2)
    with torch.no_grad():
        out = model(*args, **kwargs)[0]
    assert out.shape == args[0].shape


def test_fastercache_executes_plan_and_disable_restores(pipe, reference):
    session = cachekit.enable(pipe, "fastercache")
    out = run(pipe)
    report = executed_matches_plan(session)
    assert report.branches == ("uncond", "cond") and report.counts()["reconstruct"] > 0
    assert report.hit_rates["denoiser"] > 0 and report.hit_rates["attn.joint"] > 0
    assert not torch.equal(out, reference())
    cachekit.disable(pipe)
    assert hooked(pipe, "cachekit") == []
    assert torch.equal(run(pipe), reference())


FASTERCACHE = [  # N, (lo, hi), K, (ulo, uhi), W, alpha_low, alpha_high, low window, high window
    (2, (-1, 700), 3, (-1, 650), 0.5, 1.1, 1.1, (99, 901), (-1, 301)),
    (3, (100, 800), 2, (200, 900), 0.3, 1.2, 0.9, (200, 700), (-1, 400)),
]


@pytest.mark.parametrize("n, window, k, cfg_window, w, a_lo, a_hi, low, high", FASTERCACHE)
def test_fastercache_matches_diffusers(pipe, reference, n, window, k, cfg_window, w, a_lo, a_hi, low, high):
    from diffusers import FasterCacheConfig

    pipe.transformer.enable_cache(FasterCacheConfig(
        spatial_attention_block_skip_range=n, spatial_attention_timestep_skip_range=window,
        unconditional_batch_skip_range=k, unconditional_batch_timestep_skip_range=cfg_window,
        attention_weight_callback=lambda _: w, tensor_format="BFCHW", current_timestep_callback=lambda: pipe.current_timestep,
        alpha_low_frequency=a_lo, alpha_high_frequency=a_hi,
        low_frequency_weight_update_timestep_range=low, high_frequency_weight_update_timestep_range=high,
    ))
    assert hooked(pipe, "faster_cache_block") == ATTN1  # "^transformer_blocks.*attn": the joint attention only
    expected = run(pipe)
    pipe.transformer.disable_cache()
    session = cachekit.enable(pipe, {"policy": [
        {"type": "fastercache", "compat": "diffusers", "sites": {"kinds": ["attn.joint"]}, "window": timesteps(*window),
         "interval": n, "schedule": "constant", "weight": w, "cfg_interval": k, "cfg_window": timesteps(*cfg_window)},
        {"type": "cfg_cache", "compat": "diffusers", "window": timesteps(*cfg_window), "interval": k,
         "weighting": "compounding", "alpha_low": a_lo, "alpha_high": a_hi, "low_window": timesteps(*low),
         "high_window": timesteps(*high)},
    ]})
    out = run(pipe)
    report = executed_matches_plan(session)
    assert report.hit_rates["attn.joint"] > 0 and report.hit_rates["denoiser"] > 0  # attention and uncond rebuilt
    assert {s.module_path for s in session.planned_sites[1:]} == set(ATTN1)
    assert torch.equal(out, expected), (out - expected).abs().max().item()  # compat: bit for bit
    assert (out - reference()).abs().max().item() > 1e-3


PAB = [(2, (100, 800)), (3, (-1, 700))]


@pytest.mark.parametrize("n, window", PAB)
def test_pab_matches_diffusers(pipe, reference, n, window):
    from diffusers import PyramidAttentionBroadcastConfig

    pipe.transformer.enable_cache(PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=n, spatial_attention_timestep_skip_range=window,
        current_timestep_callback=lambda: pipe.current_timestep))
    assert hooked(pipe, "pyramid_attention_broadcast") == ATTN1
    expected = run(pipe)
    pipe.transformer.disable_cache()
    session = cachekit.enable(pipe, {"policy": [{"type": "pab", "compat": "diffusers", "sites": {"kinds": ["attn.joint"]},
                                                 "window": timesteps(*window), "spatial": n}]})
    out = run(pipe)
    assert executed_matches_plan(session).counts()["reuse"] > 0
    assert torch.equal(out, expected), (out - expected).abs().max().item()  # compat: bit for bit
    assert (out - reference()).abs().max().item() > 1e-3


def test_batch_of_two_equals_single_prompts(pipe, reference):
    # uncached, diffusers' batch of two matches the single calls to float rounding (not bitwise)
    singles = torch.cat([reference(seed=0), reference(seed=1)])
    assert (reference(batch=2) - singles).abs().max().item() <= 1e-5
    session = cachekit.enable(pipe, "fastercache")
    batched = run(pipe, batch=2)
    assert executed_matches_plan(session).counts()["reconstruct"] > 0
    cached_singles = torch.cat([run(pipe, seed=0), run(pipe, seed=1)])
    assert (batched - cached_singles).abs().max().item() <= 1e-5
    assert (batched - singles).abs().max().item() > 1e-3


@attrs.frozen(kw_only=True)
class CondReuse(Policy):
    """Reuse the previous step on the cond branch only, every other window step: the uncond half
    of each call is computed alone (the runtime cuts the branch out of the site's inputs)."""

    type_name = "test-cond-reuse"
    default_branches = ("cond",)

    def plan_site(self, site, branch, steps, timesteps):
        return {s: Action.compute() if i % 2 == 0 else Action.reuse((s - 1, site.name, branch)) for i, s in enumerate(steps)}


def test_one_branch_calls_of_attention_and_mlp(pipe):
    """attn1 takes its batch by keyword and ff by position; compare with forward hooks that compute
    both branches and overwrite the cond half with the previous step's."""
    steps = range(4, STEPS)
    reuse = set(steps[1::2])
    handles = []
    for name in ATTN1 + ["transformer_blocks.0.ff", "transformer_blocks.1.ff"]:
        state = {"step": 0}

        def swap(module, args, output, state=state):
            outs = (output,) if torch.is_tensor(output) else output
            halves = [o.chunk(2) for o in outs]
            if state["step"] in reuse:
                outs = tuple(torch.cat([h[0], c]) for h, c in zip(halves, state["cond"]))
            else:
                state["cond"] = [h[1] for h in halves]
            state["step"] += 1
            return outs[0] if torch.is_tensor(output) else outs

        handles.append(pipe.transformer.get_submodule(name).register_forward_hook(swap))
    expected = run(pipe)
    for handle in handles:
        handle.remove()
    session = cachekit.enable(pipe, CondReuse(sites={"kinds": ["attn.joint", "mlp"]}, window={"start": 4, "end": STEPS, "unit": "step"}))
    out = run(pipe)
    assert executed_matches_plan(session).counts()["reuse"] == len(reuse) * 4
    # not bitwise: the uncond half computes alone (batch 1) where the hooks ran both (batch 2), and
    # CPU kernels may round a row differently with the batch size
    assert (out - expected).abs().max().item() <= 1e-5


@attrs.frozen(kw_only=True)
class BranchReuse(Policy):
    """Reuse one branch (``reused``) of the selected sites from the previous step at every other
    window step, while the other branch computes in the same batched call: the runtime cuts the
    computing branch out of every input of the site that carries the batch."""

    type_name = "test-branch-reuse"
    reused: str = "uncond"

    def branches(self, run_branches):
        return (self.reused,) if self.reused in run_branches else ()

    def plan_site(self, site, branch, steps, timesteps):
        return {s: Action.compute() if i % 2 == 0 else Action.reuse() for i, s in enumerate(steps)}


def site_outputs(pipe, names):
    """Forward hooks recording each named module's output at every call (its computed branches)."""
    seen, handles = {name: [] for name in names}, []
    for name in names:
        def record(module, args, output, name=name):
            seen[name].append(tuple(t.clone() for t in ((output,) if torch.is_tensor(output) else output)))
        handles.append(pipe.transformer.get_submodule(name).register_forward_hook(record))
    return seen, handles


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("reused", ["uncond", "cond"])
@pytest.mark.parametrize("kind", ["block", "attn.joint"])
def test_one_branch_of_a_block_computes_with_its_own_temb(pipe, batch, reused, kind):
    """A CogVideoX block takes ``temb`` (one row per sample) by keyword beside ``hidden_states`` and
    ``encoder_hidden_states``: when one branch of the block computes and the other is reused in the
    same batched call, every per-sample input is cut to the computing branch (``temb`` was passed
    whole: "size of tensor a (2) must match the size of tensor b (4)" with two prompts, a residual
    shape error with one). The computing branch's outputs equal the uncached ones up to the first
    reused step (the rows of a batch do not interact; only float rounding differs with the batch)."""
    modules = ["transformer_blocks.0", "transformer_blocks.1"] if kind == "block" else ATTN1
    seen, handles = site_outputs(pipe, modules)
    run(pipe, steps=6, batch=batch)
    uncached = {name: calls[:] for name, calls in seen.items()}
    for calls in seen.values():
        calls.clear()
    session = cachekit.enable(pipe, BranchReuse(reused=reused, sites={"kinds": [kind]},
                                                window={"start": 2, "end": 6, "unit": "step"}))
    run(pipe, steps=6, batch=batch)  # the first run also times the sites: calls of its own
    for calls in seen.values():
        calls.clear()
    with Recorder(session, [s.name for s in session.adapter.sites() if s.kind == kind]) as recorder:
        run(pipe, steps=6, batch=batch)
    for handle in handles:
        handle.remove()
    reuses = executed_matches_plan(session).counts()["reuse"]
    assert reuses > 0 and check_cached_values(session, recorder) == reuses  # the reused rows: the stored ones
    computed = ["uncond", "cond"].index("cond" if reused == "uncond" else "uncond")
    first_reuse = 3  # the window's steps 2, 3, ...: computed at 2, reused at 3
    for name in modules:
        for ref, got in zip(uncached[name][first_reuse], seen[name][first_reuse]):
            assert got.shape == ref.shape
            diff = (got.chunk(2)[computed] - ref.chunk(2)[computed]).abs().max().item()
            assert diff <= 1e-5, (name, diff)
    cachekit.disable(pipe)
