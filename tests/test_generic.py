"""The generic adapter: specs equal to the dedicated adapters, clear spec errors, config-file specs,
and the shipped specs (Open-Sora 1.2, Open-Sora-Plan, Vchitect-2.0) on stand-in modules."""

import warnings

import attrs

import pytest
import torch

import cachekit
from cachekit import AdapterError, PlanError
from cachekit.adapters.generic import GenericAdapter, shipped_specs
from cachekit.adapters.latte import LatteAdapter
from cachekit.adapters.wan import WanAdapter
from cachekit.demo import demo_call, tiny_latte_pipeline
from tests import standins
from tests.pipelines import tiny_wan_pipeline, wan_call
from tests.recording import Recorder, check_cached_values

LATTE_SPEC = """
[adapter]
name = "latte-spec"
model_class = "LatteTransformer3DModel"
cfg_layout = "batched"
call_order = ["uncond", "cond"]
output_layout = "BCFHW"
stack = false

[[adapter.blocks]]
list = "transformer_blocks"
site = "blocks.{i}.spatial"
sites = [
  { name = "blocks.{i}.attn.spatial", path = "attn1", kind = "attn.spatial" },
  { name = "blocks.{i}.attn.cross", path = "attn2", kind = "attn.cross" },
  { name = "blocks.{i}.mlp.spatial", path = "ff", kind = "mlp" },
]

[[adapter.blocks]]
list = "temporal_transformer_blocks"
site = "blocks.{i}.temporal"
sites = [
  { name = "blocks.{i}.attn.temporal", path = "attn1", kind = "attn.temporal" },
  { name = "blocks.{i}.mlp.temporal", path = "ff", kind = "mlp" },
]
"""

WAN_SPEC = {
    "name": "wan-spec", "model_class": ["WanTransformer3DModel"], "cfg_layout": "split",
    "call_order": ["cond", "uncond"], "output_layout": "BCFHW",
    "blocks": [{"list": "blocks", "site": "blocks.{i}", "sites": [
        {"name": "blocks.{i}.attn.joint", "path": "attn1", "kind": "attn.joint"},
        {"name": "blocks.{i}.attn.cross", "path": "attn2", "kind": "attn.cross"},
        {"name": "blocks.{i}.mlp", "path": "ffn", "kind": "mlp"}]}],
}

BLOCKS_AND_ATTENTION = {"policy": [
    {"type": "reuse", "sites": {"kinds": ["block"], "blocks": "0"}, "interval": 3, "window": {"start": 0.2, "end": 0.6}},
    {"type": "fastercache", "sites": {"kinds": ["attn"], "blocks": "1"}, "window": {"start": 0.3, "end": 1.0}},
    {"type": "cfg_cache", "window": {"start": 0.3, "end": 1.0}}]}


def run_with(pipe, call, config, adapter=None):
    session = cachekit.enable(pipe, config, adapter=adapter)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out = pipe(**call()).frames
    finally:
        cachekit.disable(pipe)
    return session, out


@pytest.mark.parametrize("spec, dedicated, build, call", [
    ("latte", LatteAdapter, tiny_latte_pipeline, lambda pipe: demo_call(pipe, steps=10)),
    ("wan", WanAdapter, tiny_wan_pipeline, lambda pipe: wan_call(pipe, 10)),
])
def test_spec_gives_the_dedicated_adapters_plan_and_output(spec, dedicated, build, call, tmp_path):
    if spec == "latte":
        path = tmp_path / "latte.toml"
        path.write_text(LATTE_SPEC)
        spec = path
    else:
        spec = WAN_SPEC
    pipe = build()
    dedicated_sites = dedicated(pipe.transformer).validate()
    generic = GenericAdapter.from_spec(spec)
    if dedicated is LatteAdapter:  # a spec's stack spans every block; Latte's starts after the first
        dedicated_sites = [attrs.evolve(s, parent="denoiser" if s.parent == "stack" else s.parent)
                           for s in dedicated_sites if s.kind != "stack"]
    assert generic(pipe.transformer).validate() == dedicated_sites
    for config in ("fastercache", BLOCKS_AND_ATTENTION):
        first, expected = run_with(pipe, lambda: call(pipe), config)
        second, out = run_with(pipe, lambda: call(pipe), config, adapter=spec)
        assert second.adapter.name == generic.name
        assert second.plan.to_dict() == first.plan.to_dict()
        assert second.report().executed == first.report().executed
        assert torch.equal(out, expected)


def test_config_file_with_an_adapter_table(tmp_path):
    path = tmp_path / "latte-fastercache.toml"
    path.write_text('extends = "fastercache"\n' + LATTE_SPEC)
    pipe = tiny_latte_pipeline()
    session, out = run_with(pipe, lambda: demo_call(pipe, steps=10), str(path))
    assert session.adapter.name == "latte-spec"
    assert [p.type_name for p in session.config.policies] == ["fastercache", "cfg_cache"]
    assert session.report().counts()["reconstruct"] > 0


@pytest.mark.parametrize("change, message", [
    (lambda s: s.replace('path = "attn1", kind = "attn.spatial"', 'path = "attn", kind = "attn.spatial"'),
     r"site 'blocks.0.attn.spatial': module 'transformer_blocks.0.attn' not found in LatteTransformer3DModel "
     r"\(no 'attn' in 'transformer_blocks.0'; it has .*attn1"),
    (lambda s: s.replace('kind = "attn.temporal"', 'kind = "temporal"'),
     r"site 'blocks.0.attn.temporal': kind 'temporal' is not a site kind; use one of denoiser, block"),
    (lambda s: s.replace('list = "temporal_transformer_blocks"', 'list = "temporal_blocks"'),
     r"block list 'temporal_blocks' not found in LatteTransformer3DModel \(it has .*temporal_transformer_blocks"),
    (lambda s: s.replace('cfg_layout = "batched"', 'cfg_layout = "batch"'), r"cfg_layout 'batch' is invalid"),
])
def test_spec_mistakes_fail_at_enable(change, message, tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(change(LATTE_SPEC))
    pipe = tiny_latte_pipeline()
    with pytest.raises(AdapterError, match=message):
        cachekit.enable(pipe, "fastercache", adapter=path)
    assert not hasattr(pipe.transformer, "_cachekit_session")


@pytest.mark.parametrize("spec, message", [
    ({"model_class": "X", "blocks": [], "layers": 3}, r"adapter spec: unknown key\(s\) 'layers'; allowed: name, model_class"),
    ({"blocks": []}, r"adapter spec: missing 'model_class'"),
    ({"model_class": "X", "blocks": [{"list": "b", "sites": [{"name": "a", "path": "p"}]}]},
     r"adapter spec, blocks\[0\].sites\[0\]: missing 'kind'"),
    ({"model_class": "X", "blocks": [{"list": "b", "residual": "yes"}]},
     r"blocks\[0\]: 'residual' = 'yes' should be true, false or a list of input names"),
])
def test_spec_structure_is_checked_when_read(spec, message):
    with pytest.raises(AdapterError, match=message):
        GenericAdapter.from_spec(spec)


def test_spec_for_another_model_is_refused():
    pipe = tiny_latte_pipeline()
    with pytest.raises(AdapterError, match=r"adapter 'wan-spec' is for WanTransformer3DModel, not LatteTransformer3DModel"):
        cachekit.enable(pipe, "fastercache", adapter=WAN_SPEC)


def test_no_adapter_lists_the_registered_ones_and_points_to_the_guide():
    with pytest.raises(AdapterError, match=r"no cachekit adapter for STDiT4; registered adapters: .*open-sora \(STDiT3\)"
                                           r".*wan \(WanTransformer3DModel\).*\. .*adapter='spec.toml'.*docs/writing-an-adapter.md"):
        cachekit.enable(type("STDiT4", (torch.nn.Module,), {})(), "fastercache", num_inference_steps=4)


# -- shipped specs on stand-ins ------------------------------------------------------------------

SHIPPED = {
    "open-sora": (standins.STDiT3, standins.sample_open_sora, 30),
    "open-sora-plan": (standins.LatteT2V, standins.sample_open_sora_plan, 150),
    "vchitect-2.0": (standins.VchitectXLTransformerModel, standins.sample_vchitect, 100),
}


def first_block_rows(model, sample, steps):
    """Rows (dim 0 of the input) entering the model's first block module over one run."""
    rows = []
    first = next(m for name, m in model.named_modules() if name.endswith("blocks.0"))
    handle = first.register_forward_pre_hook(lambda m, args, kwargs: rows.append(
        next(v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)).shape[0]), with_kwargs=True)
    try:
        out = sample(model, steps)
    finally:
        handle.remove()
    return out, sum(rows)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_spec_on_its_stand_in(name):
    build, sample, steps = SHIPPED[name]
    path = shipped_specs()[name]
    model = build()
    assert type(cachekit.find_adapter(model)).__name__ == f"GenericAdapter[{name}]"  # registered by class
    reference, uncached_rows = first_block_rows(model, sample, steps)
    timesteps = standins._schedule(steps).tolist()

    kinds = sorted({s.kind for s in cachekit.find_adapter(model).validate()})
    cachekit.enable(model, {"policy": [{"type": "reuse", "interval": 1, "sites": {"kinds": kinds}}]},
                    num_inference_steps=steps, cfg=True, timesteps=timesteps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert torch.equal(sample(model, steps), reference)  # every site hooked, all computed: bitwise
    cachekit.disable(model)

    session = cachekit.enable(model, str(path), num_inference_steps=steps, cfg=True, timesteps=timesteps)
    sample(model, steps)  # the first run also times the model
    attention = [s.name for s in session.adapter.sites() if s.kind.startswith("attn.")]
    with Recorder(session, attention) as recorder:
        _, rows = first_block_rows(model, sample, steps)
    cachekit.disable(model)
    plan, report = session.plan, session.report()
    executed = {n: a.kind for n, a in plan.nodes() if a.kind != "skip"}
    assert report.executed == executed
    # every reused or rebuilt attention output: the plan's kernel on the outputs its sources computed
    cached = [n for n, kind in executed.items() if n[1] != "denoiser" and kind != "compute"]
    assert cached and check_cached_values(session, recorder) == len(cached)
    assert report.hit_rates["attn." + ("joint" if name == "vchitect-2.0" else "spatial")] > 0.3
    computed = sum(plan.action((s, "denoiser", b)).kind == "compute" for s in range(steps) for b in plan.branches)
    assert rows * (steps * 2) == uncached_rows * computed  # the first block runs once per computed branch
    if name != "vchitect-2.0":
        assert computed < steps * 2  # CFG-Cache skips the uncond branch
    assert torch.equal(sample(model, steps), reference)  # disabled: bitwise


def test_vchitect_cfg_cache_needs_cond_first():
    model = standins.VchitectXLTransformerModel()
    with pytest.raises(PlanError, match=r"reads .*'cond' branch after 'uncond' \(call order uncond, cond\)"):
        cachekit.enable(model, "fastercache/vchitect", num_inference_steps=100, cfg=True)


def latte_example(model, batch):
    """A factory of example inputs: the Latte adapter's own."""
    return LatteAdapter(model).example_call(batch)


LATTE_EXAMPLE = """
[adapter.example_inputs]
hidden_states = { shape = [4, 4, 8, 8] }
timestep = { shape = [], value = 500, dtype = "int64" }
encoder_hidden_states = { shape = [8, 32] }
return_dict = false
"""


@pytest.mark.parametrize("example", ["table", "factory"])
def test_a_spec_declares_example_inputs_for_a_dry_run(tmp_path, example):
    """A spec without example inputs cannot predict a plan before a run; with them, as a table of
    tensors or a factory, it gives the inputs the Latte adapter builds and a timed prediction."""
    from cachekit.config import tomllib

    model = tiny_latte_pipeline().transformer
    bare = tomllib.loads(LATTE_SPEC)["adapter"]
    session = cachekit.enable(model, "fastercache", num_inference_steps=10, cfg=True, adapter=bare)
    with pytest.raises(AdapterError, match=r"adapter 'latte-spec' cannot build example inputs; declare example_inputs "
                                           r"in its spec \(see docs/writing-an-adapter.md\) or run the pipeline once"):
        session.predict(session.plan_for(10))
    cachekit.disable(model)

    if example == "table":
        path = tmp_path / "spec.toml"
        path.write_text(LATTE_SPEC + LATTE_EXAMPLE)
        spec = path
    else:
        spec = {**bare, "example_inputs": "tests.test_generic:latte_example"}
    args, kwargs = GenericAdapter.from_spec(spec)(model).example_call(2)
    want_args, want_kwargs = LatteAdapter(model).example_call(2)
    got, want = [*args, *kwargs.values()], [*want_args, *want_kwargs.values()]  # the table passes all by keyword
    assert len(got) == len(want) and list(kwargs)[-3:] == list(want_kwargs)
    assert all(torch.equal(g, w) and g.dtype == w.dtype if isinstance(w, torch.Tensor) else g == w for g, w in zip(got, want))
    session = cachekit.enable(model, "fastercache", num_inference_steps=10, cfg=True, adapter=spec)
    try:
        prediction = session.predict(session.plan_for(10))
    finally:
        cachekit.disable(model)
    assert prediction.basis == "seconds" and prediction.speedup > 1


def test_cachekit_plan_runs_on_a_custom_model_whose_spec_gives_example_inputs(tmp_path, capsys):
    """``cachekit plan --model module:factory`` on a model only a config file's spec describes."""
    from cachekit.cli import main

    spec = shipped_specs()["vchitect-2.0"].read_text().replace('name = "vchitect-2.0"', 'name = "vchitect-example"')
    path = tmp_path / "vchitect.toml"
    path.write_text(spec + """
[adapter.example_inputs]
hidden_states = { shape = [3, 4, 8, 8] }
encoder_hidden_states = { shape = [5, 16] }
pooled_projections = { shape = [8] }
timestep = { shape = [], value = 500 }
return_dict = false
""")
    assert main(["plan", "--model", "tests.standins:VchitectXLTransformerModel", "--config", str(path),
                 "--steps", "10"]) == 0
    out = capsys.readouterr().out
    assert "predicted speedup: " in out and "from timed calls" in out


def test_uncond_first_split_model_is_told_how_to_use_fastercache():
    """The ``fastercache`` preset on a model calling uncond first: the error says what to do instead,
    and the config it points to (FasterCache's attention entry alone) plans."""
    model = standins.VchitectXLTransformerModel()
    with pytest.raises(PlanError, match=r"call order uncond, cond\); leave policy 'cfg_cache' out \(a config file with "
                                        r"the other \[\[policy\]\] entries, .*\) or make it read 'cond' of an earlier step"):
        cachekit.enable(model, "fastercache", num_inference_steps=10, cfg=True)
    cachekit.enable(model, {"policy": [{"type": "fastercache"}]}, num_inference_steps=10, cfg=True)
    cachekit.disable(model)


def test_spec_declares_shared_inputs_and_passes_the_one_branch_calls():
    """``shared_inputs`` (top level: every site; per site) reach the adapter; a CogVideoX 1.5 spec
    declaring its rotary table shared passes check_adapter, one-branch calls of every site included."""
    from cachekit.testing import check_adapter
    from tests.pipelines import cogvideox_call, tiny_cogvideox15_pipeline

    spec = {"name": "cogvideox-spec", "model_class": "CogVideoXTransformer3DModel", "output_layout": "BFCHW",
            "shared_inputs": ["image_rotary_emb"],
            "blocks": [{"list": "transformer_blocks", "site": "blocks.{i}", "sites": [
                {"name": "blocks.{i}.attn.joint", "path": "attn1", "kind": "attn.joint",
                 "shared_inputs": ["image_rotary_emb"]},
                {"name": "blocks.{i}.mlp", "path": "ff", "kind": "mlp"}]}]}
    adapter = GenericAdapter.from_spec(spec)
    assert adapter.shared_kwargs == ("image_rotary_emb",) and adapter.batch_kwargs is None
    sites = adapter(tiny_cogvideox15_pipeline().transformer).validate()
    assert [s.shared_inputs for s in sites[2:5]] == [None, ("image_rotary_emb",), None]  # after the denoiser and the stack
    result = check_adapter(tiny_cogvideox15_pipeline, cogvideox_call, adapter=spec)
    assert result.adapter == "cogvideox-spec" and len(result.one_branch_sites) == 7  # the stack and 2 x (block, attention, MLP)
