import json

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cachekit
from cachekit import CacheConfig, ConfigError, Selector, Window, dump_config, load_config
from cachekit.config import from_dict, tomllib
from cachekit.policies.pab import Pab
from cachekit.policies.reuse import Reuse


def test_names_and_objects_resolve():
    assert load_config("reuse").policies == (Reuse(),)
    assert load_config(Reuse(interval=3)).policies == (Reuse(interval=3),)
    assert load_config([Reuse(label="a"), Reuse(label="b", priority=1)]).policies[1].priority == 1
    preset = load_config("naive-reuse")
    assert preset.policies == (Reuse(sites={"kinds": ["attn.spatial", "attn.temporal", "attn.joint"]}, window={"start": 0.2, "end": 0.9}),)


@pytest.mark.parametrize("fmt", ["toml", "json", "yaml"])
def test_file_round_trip(tmp_path, fmt):
    config = load_config({"policy": [
        {"type": "reuse", "label": "attn", "interval": 3, "sites": {"kinds": "attn", "blocks": [0, 1, 5]},
         "window": {"start": 0.25, "end": 0.75}},
        {"type": "reuse", "label": "mlp", "priority": 2, "sites": {"kinds": ["mlp"], "names": ["blocks.1*"]},
         "window": {"start": 3, "end": 9, "unit": "step"}},
    ]})
    path = tmp_path / f"config.{fmt}"
    path.write_text(dump_config(config, fmt))
    again = load_config(path)
    assert again == config
    assert dump_config(again, fmt) == dump_config(config, fmt)


@settings(max_examples=40, deadline=None)
@given(interval=st.integers(1, 50), start=st.floats(0, 0.49), end=st.floats(0.5, 1.0), priority=st.integers(-5, 5),
       blocks=st.lists(st.integers(0, 40), min_size=1, max_size=4))
def test_round_trip_property(interval, start, end, priority, blocks):
    config = load_config(Reuse(interval=interval, priority=priority, window={"start": start, "end": end},
                               sites={"kinds": ["attn"], "blocks": blocks}))
    for fmt in ("toml", "json"):
        text = dump_config(config, fmt)
        data = json.loads(text) if fmt == "json" else tomllib.loads(text)
        assert from_dict(data) == config


def test_extends_overrides_and_adds(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('extends = "naive-reuse"\n[[policy]]\ntype = "reuse"\ninterval = 4\nwindow = { end = 0.6 }\n'
                    '[[policy]]\ntype = "reuse"\nlabel = "mlp"\nsites = { kinds = ["mlp"] }\npriority = 1\n')
    config = load_config(path)
    first, second = config.policies
    assert (first.interval, first.window.start, first.window.end) == (4, 0.2, 0.6)
    assert first.sites.kinds == ("attn.spatial", "attn.temporal", "attn.joint")
    assert second.name == "mlp" and second.priority == 1


def test_extends_merges_nested_overrides_into_the_preset_entry():
    preset = load_config("fastercache/latte").policies[0]
    config = load_config({"extends": "fastercache/latte", "policy": [
        {"type": "fastercache", "sites": {"blocks": "0"}, "window": {"end": 0.8}}]})
    first = config.policies[0]
    assert first.sites == Selector(kinds=("attn.spatial", "attn.temporal", "attn.joint"), blocks="0")  # kinds kept
    assert first.window == Window(start=preset.window.start, end=0.8)
    assert attrs.evolve(first, sites=preset.sites, window=preset.window) == preset  # nothing else moved
    assert config.policies[1] == load_config("fastercache/latte").policies[1]


def test_extends_with_another_type_under_a_label_replaces_the_entry(tmp_path):
    config = load_config({"extends": "naive-reuse", "policy": [{"type": "pab", "label": "reuse"}]})
    assert config.policies == (Pab(label="reuse"),)


@pytest.mark.parametrize("preset", cachekit.registry().names("preset"))
def test_extending_a_preset_with_its_own_entries_changes_nothing(preset):
    config = load_config(preset)
    assert load_config({"extends": preset}) == config
    assert load_config({"extends": preset, "policy": config.to_dict()["policy"]}) == config


@pytest.mark.parametrize("entry, message", [
    ({"type": "nope"}, r"unknown policy 'nope'; registered policies: .*reuse"),
    ({"type": "reuse", "intervall": 2}, r"policy 'reuse': unknown field 'intervall'; valid fields of 'reuse': label, .*sites.*interval"),
    ({"type": "reuse", "interval": "2"}, r"policy 'reuse': field 'interval': got '2', expected an integer >= 1"),
    ({"type": "reuse", "interval": 0}, r"field 'interval': got 0, expected an integer >= 1"),
    ({"type": "reuse", "interval": True}, r"field 'interval': got True, expected an integer"),
    ({"type": "reuse", "window": {"start": 0.5, "end": 0.5}}, r"field 'window': got \(0.5, 0.5\), expected fractions with 0 <= start < end <= 1"),
    ({"type": "reuse", "window": {"unit": "seconds"}}, r"field 'window.unit': got 'seconds', expected one of 'fraction', 'step', 'timestep'"),
    ({"type": "reuse", "window": {"begin": 0.1}}, r"field 'window.begin': got 0.1, expected a known field \(start, end, unit\)"),
    ({"type": "reuse", "sites": {"kinds": ["attention"]}}, r"field 'sites.kinds': got 'attention', expected one of denoiser"),
    ({"type": "reuse", "sites": {"blocks": "3-1"}}, r"field 'sites.blocks': got '3-1'"),
    ({"interval": 2}, r"has no 'type'; registered policies: .*reuse"),
])
def test_errors_name_file_entry_field(tmp_path, entry, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"policy": [entry]}))
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value) and "entry 0" in str(info.value)
    assert "\n" not in str(info.value)


def test_other_errors(tmp_path):
    with pytest.raises(ConfigError, match="neither a preset .*naive-reuse.* a policy .*reuse"):
        load_config("fastest")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[policy]\n")
    with pytest.raises(ConfigError, match="bad.toml: cannot parse"):
        load_config(bad)
    with pytest.raises(ConfigError, match="two policy entries are named 'reuse'"):
        load_config([Reuse(), Reuse(interval=3)])
    with pytest.raises(ConfigError, match="unknown top-level key"):
        load_config({"policies": []})
    with pytest.raises(ConfigError, match="extends: unknown preset 'nope'"):
        load_config({"extends": "nope"})


class _Counted(str):
    """A label that counts its equality comparisons."""

    compared = 0

    def __eq__(self, other):
        type(self).compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_the_duplicate_name_check_is_linear():
    """20,000 entries: the check compares names a bounded number of times per entry, not once per pair."""
    from cachekit.policies.reuse import Reuse

    n = 20000
    policies = [Reuse(label=_Counted(f"p{i}")) for i in range(n)]
    _Counted.compared = 0
    CacheConfig(policies)
    assert _Counted.compared <= 2 * n
    with pytest.raises(ConfigError, match="two policy entries are named 'p7'"):
        CacheConfig([*policies[:10], Reuse(label="p7")])


def test_a_long_config_extending_a_preset_loads(tmp_path):
    path = tmp_path / "long.toml"
    path.write_text('extends = "naive-reuse"\n' + "".join(f'[[policy]]\ntype = "reuse"\nlabel = "p{i}"\n' for i in range(2000))
                    + '[[policy]]\ntype = "reuse"\ninterval = 3\n')
    config = load_config(path)
    assert len(config.policies) == 2001
    merged = [p for p in config.policies if p.name == "reuse"]  # merged into the preset's entry
    assert len(merged) == 1 and merged[0].interval == 3 and merged[0].window.start == 0.2
