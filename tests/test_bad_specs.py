"""A generic adapter spec's mistakes are one bounded line: a YAML alias bomb in it, an unknown field in
a site name template."""

import pytest
import torch

import cachekit
from cachekit import AdapterError
from cachekit.adapters.generic import GenericAdapter
from cachekit.demo import tiny_latte_pipeline

torch.set_num_threads(1)

LONG = 400


def bomb_lines(key: str, depth: int = 6) -> list[str]:
    """YAML lines setting ``key`` (inside ``adapter:``) to nested aliases that expand to 9**depth strings."""
    lines = [f"  {key}:", "  - &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    return lines + [f"  - &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, depth)]


@pytest.mark.parametrize("key, match", [
    ("call_order", r"'call_order' = \[\[.*\.\.\. should be a list of strings"),
    ("layers", r"unknown key\(s\) 'layers'; allowed"),
])
def test_an_alias_bomb_in_a_config_adapter_table_is_a_short_error(tmp_path, key, match):
    path = tmp_path / "bomb.yaml"
    lines = ["policy:", "- type: reuse", "adapter:", "  model_class: LatteTransformer3DModel",
             "  blocks: [{list: transformer_blocks}]", *bomb_lines(key)]
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 600
    pipe = tiny_latte_pipeline()
    with pytest.raises(AdapterError, match=match) as info:
        cachekit.enable(pipe, str(path))
    assert len(str(info.value)) < LONG
    assert not hasattr(pipe.transformer, "_cachekit_session")


def test_an_alias_bomb_spec_file_is_a_short_error(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("\n".join(["model_class: LatteTransformer3DModel", "blocks:", *bomb_lines("sites")[1:]]) + "\n")
    with pytest.raises(AdapterError, match=r"spec.yaml: 'blocks' = \[\[.*\.\.\. should be a list of tables") as info:
        GenericAdapter.from_spec(path)
    assert len(str(info.value)) < LONG


@pytest.mark.parametrize("block, match", [
    ({"list": "transformer_blocks", "site": "b{j}"},
     r"blocks\[0\]: 'site' = 'b\{j\}': unknown field \{j\}; a site name may use \{i\}, the block index"),
    ({"list": "transformer_blocks", "sites": [{"name": "b{i}.{x}", "path": "attn1", "kind": "attn.spatial"}]},
     r"blocks\[0\].sites\[0\]: 'name' = 'b\{i\}.\{x\}': unknown field \{x\}"),
    ({"list": "transformer_blocks", "site": "b{i"}, r"'site' = 'b\{i': .*; a site name may use \{i\}"),
    ({"list": "transformer_blocks", "site": "b{0}"}, r"'site' = 'b\{0\}': .*; a site name may use \{i\}"),
])
def test_a_site_template_with_an_unknown_field_is_refused_when_read(block, match):
    with pytest.raises(AdapterError, match=match):
        GenericAdapter.from_spec({"model_class": "LatteTransformer3DModel", "blocks": [block]})


def test_braces_are_written_doubled():
    spec = GenericAdapter.from_spec({"model_class": "LatteTransformer3DModel",
                                     "blocks": [{"list": "transformer_blocks", "site": "b{{{i}}}"}]})
    sites = spec(tiny_latte_pipeline().transformer).sites()
    assert [s.name for s in sites][:3] == ["denoiser", "b{0}", "b{1}"]


SPEC = {"model_class": "LatteTransformer3DModel", "blocks": [{"list": "transformer_blocks"}]}


@pytest.mark.parametrize("example, match", [
    ("no_colon", r"'example_inputs' = 'no_colon' should be a 'package.module:function' string or a table of input names"),
    ({"hidden_states": {"shape": [0, 4]}}, r"example_inputs.hidden_states: 'shape' = \[0, 4\] should be a list of at "
                                           r"most 8 sizes >= 1"),
    ({"hidden_states": {"shape": [2**20, 2**20, 4]}}, r"'shape' = .* should be .* with at most 2\*\*31 elements"),
    ({"hidden_states": {"shape": [4], "dtype": "float8"}}, r"'dtype' = 'float8' should be one of float32, float16, "),
    ({"hidden_states": {"shape": [4], "dtype": [1]}}, r"'dtype' = \[1\] should be one of float32"),
    ({"hidden_states": {"shape": [4], "value": float("nan")}}, r"'value' = nan should be a finite number"),
    ({"hidden_states": {"shape": [4], "size": 3}}, r"example_inputs.hidden_states: unknown key\(s\) 'size'; allowed: "
                                                   r"shape, dtype, value, batched"),
    ({"hidden_states": {"dtype": "float32"}}, r"example_inputs.hidden_states: missing 'shape'"),
    ({"hidden_states": [1, 2]}, r"example_inputs.hidden_states = \[1, 2\] should be a tensor table \{shape, dtype, "
                                r"value, batched\} or a plain value"),
    ({"return_dict": False}, r"example_inputs: no tensor input; give the hidden states first"),
    ({"hidden states": {"shape": [4]}}, r"example_inputs: input name 'hidden states' is not a parameter name"),
])
def test_bad_example_inputs_are_refused_when_read(example, match):
    with pytest.raises(AdapterError, match=match) as info:
        GenericAdapter.from_spec({**SPEC, "example_inputs": example})
    assert len(str(info.value)) < LONG and "\n" not in str(info.value)


def not_a_pair(model, batch):
    return [torch.zeros(batch)]


@pytest.mark.parametrize("factory, match", [
    ("tests.nowhere:inputs", r"example_inputs 'tests.nowhere:inputs': cannot load it \(ModuleNotFoundError: .*\); name "
                             r"an importable module and a function in it"),
    ("tests.test_bad_specs:nothing", r"cannot load it \(AttributeError: .*nothing"),
    ("tests.test_bad_specs:not_a_pair", r"example_inputs 'tests.test_bad_specs:not_a_pair' returned \[tensor\(.*\]; "
                                        r"return \(args, kwargs\)"),
])
def test_a_bad_example_factory_is_named_when_called(factory, match):
    adapter = GenericAdapter.from_spec({**SPEC, "example_inputs": factory})(tiny_latte_pipeline().transformer)
    with pytest.raises(AdapterError, match=match) as info:
        adapter.example_call(2)
    assert len(str(info.value)) < LONG
