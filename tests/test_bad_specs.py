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
