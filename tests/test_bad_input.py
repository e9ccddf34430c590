"""Bad input is refused with one short line naming the file, entry, field or plugin: never a parser
traceback, a TypeError, a megabyte message, or a NaN that reaches the model."""

import json
import sys

import attrs
import pytest
import torch

import cachekit
from cachekit import ConfigError, RegistryError, dump_config, fields, load_config
from cachekit.cli import main
from cachekit.errors import SHOWN_CHARS, PluginWarning
from tests import toy

NAN, INF = float("nan"), float("inf")
LONG = 400  # no message in this file may be longer: every echoed value is truncated


def refused(config, match: str) -> str:
    with pytest.raises(ConfigError, match=match) as info:
        load_config(config)
    message = str(info.value)
    assert "\n" not in message and len(message) < LONG, message
    return message


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("entry, field", [
    ({"type": "fastercache"}, "weight"),
    ({"type": "cfg_cache"}, "a_low"),
    ({"type": "cfg_cache"}, "a_high"),
    ({"type": "cfg_cache"}, "alpha_low"),
    ({"type": "cfg_cache"}, "alpha_high"),
    ({"type": "cfg_cache"}, "switch"),
])
def test_non_finite_numbers_are_refused(entry, field, bad):
    refused({"policy": [{**entry, field: bad}]}, rf"entry 0: policy '{entry['type']}': field '{field}': got -?(nan|inf), expected a finite number")


@pytest.mark.parametrize("bad", [NAN, INF])
@pytest.mark.parametrize("entry, field", [
    ({"type": "reuse", "window": {"start": 100, "end": 900, "unit": "timestep"}}, "window"),
    ({"type": "cfg_cache", "weighting": "compounding"}, "low_window"),
    ({"type": "fastercache", "compat": "diffusers", "window": {"start": -1, "end": 901, "unit": "timestep"}}, "cfg_window"),
])
@pytest.mark.parametrize("bound", ["start", "end"])
def test_non_finite_window_bounds_are_refused(entry, field, bound, bad):
    window = {"start": 100, "end": 900, "unit": "timestep", bound: bad}
    refused({"policy": [{**entry, field: window}]}, rf"policy '{entry['type']}': field '{field}\.{bound}': got (nan|inf), expected a finite number")


def test_toml_nan_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "nan.toml"
    path.write_text('[[policy]]\ntype = "fastercache"\nweight = nan\n')
    assert str(path) in refused(path, "field 'weight': got nan")


@attrs.frozen(kw_only=True)
class Unvalidated(cachekit.Policy):
    """A third-party policy that declares no validators: the config still refuses NaN."""

    type_name = "test-unvalidated"
    factor: float = 1.0
    table: dict = attrs.field(factory=dict)

    def plan_site(self, site, branch, steps, timesteps):
        return {}


@pytest.mark.parametrize("policy, field", [
    (Unvalidated(factor=NAN), "factor"),
    (Unvalidated(table={"scales": [1.0, INF]}), r"table\.scales\[1\]"),
    (Unvalidated(label="x", window=cachekit.Window(start=NAN, end=5, unit="timestep")), r"window\.start"),
])
def test_non_finite_numbers_of_any_policy_are_refused(policy, field):
    refused(policy, rf"policy '{policy.name}': field '{field}': got (nan|inf), expected a finite number")


@pytest.mark.parametrize("entry, match", [
    ({"type": ["reuse"]}, r"entry 0: a policy name must be a string, got \['reuse'\]; registered policies: .*reuse"),
    ({"type": {"name": "reuse"}}, r"a policy name must be a string, got \{'name': 'reuse'\}"),
    ({"type": "fastercache", "schedule": ["linear"]}, r"policy 'fastercache': field 'schedule': got \['linear'\], expected a non-empty string"),
    ({"type": "fastercache", "schedule": {"a": 1}}, r"field 'schedule': got \{'a': 1\}, expected a non-empty string"),
    ({"type": "cfg_cache", "weighting": ["paper"]}, r"field 'weighting': got \['paper'\], expected one of 'paper', 'compounding'"),
])
def test_list_or_dict_where_a_name_belongs(entry, match):
    refused({"policy": [entry]}, match)


def test_extends_must_name_a_preset():
    refused({"extends": ["fastercache"], "policy": []}, r"'extends' must be a preset name, got \['fastercache'\]; presets: .*naive-reuse")


def test_top_level_keys_must_be_strings(tmp_path):
    refused({1: 2, "policy": [{"type": "reuse"}]}, "config: top-level keys must be strings, got 1; allowed: 'policy', 'extends'")
    refused({None: 1, 2: 3}, "top-level keys must be strings")
    path = tmp_path / "keys.yaml"
    path.write_text("policy: [{type: reuse}]\n3: x\n")
    assert str(path) in refused(path, "top-level keys must be strings, got 3")


@pytest.mark.parametrize("name, content, match", [
    ("syntax.yaml", "policy: [\n  - type: reuse\n :", r"cannot parse: expected the node content, but found '-' \(line 2, column 3\)"),
    ("tag.yaml", "policy: !!python/object/apply:os.system ['echo pwned']\n",
     r"cannot parse: could not determine a constructor for the tag .*python/object/apply:os.system.* \(line 1, column 9\); cachekit reads plain YAML"),
    ("unhashable.yaml", "policy: [{type: reuse}]\n? [a, b]\n: 1\n", r"cannot parse: found unhashable key"),
    ("latin1.toml", '[[policy]]\ntype = "reuse"\nlabel = "caf\xe9"\n'.encode("latin-1"), r"not UTF-8 text \(byte 0xe9 on line 3\); save it as UTF-8"),
    ("latin1.yaml", "policy: [{type: reuse, label: caf\xe9}]\n".encode("latin-1"), r"not UTF-8 text \(byte 0xe9"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "cannot parse: nested too deeply"),
    ("list.json", "[1, 2]", r"a config must be a mapping with a 'policy' list, got \[1, 2\]"),
])
def test_unreadable_files_are_one_line_naming_the_file(tmp_path, capsys, name, content, match):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert refused(path, match).startswith(f"{path}: ")
    assert main(["plan", "--config", str(path), "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"cachekit: error: {path}: "), err


def test_a_directory_named_like_a_config(tmp_path):
    (tmp_path / "dir.toml").mkdir()
    refused(tmp_path / "dir.toml", r"config file '.*dir.toml': cannot read: Is a directory")


def alias_bomb(depth: int = 6) -> str:
    """A ~400-byte YAML file whose anchors expand to 9**depth strings (megabytes when printed)."""
    lines = ["policy:", "- type: reuse", "  label: x", "  sites:", "    names:", "    - &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"    - &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


def test_alias_bomb_message_is_bounded(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    assert path.stat().st_size < 500
    message = refused(path, r"entry 0: policy 'x': field 'sites.names': got \(\[.*\.\.\., expected a list of site-name patterns")
    assert str(path) in message


@pytest.mark.parametrize("config, match", [
    ({"policy": [{"type": "reuse", "label": "x" * 10**6, "interval": 0}]}, r"policy 'x+\.\.\.x+': field 'interval': got 0"),
    ({"policy": [{"type": "reuse", "y" * 10**6: 1}]}, r"policy 'reuse': unknown field 'y+\.\.\.y+'; valid fields of 'reuse'"),
    ({"policy": [{"type": "reuse", "interval": list(range(10**6))}]}, r"field 'interval': got \[0, 1, 2, 3, 4, 5, \.\.\.\], expected an integer"),
    ({"policy": [{"type": "z" * 10**6}]}, r"unknown policy 'z+\.\.\.z+'; registered policies"),
    ({"policy": [{"type": "reuse", "sites": {"blocks": "0-" * 10**5}}]}, r"field 'sites.blocks': got '0-0-.*\.\.\..*0-', expected a block range"),
    ("n" * 10**6 + ".toml", r"config file 'n+\.\.\.n+\.toml': cannot read: File name too long"),
    ("n" * 10**6, r"'n+\.\.\.n+' is neither a preset"),
    ({"policy": "p\n" * 10**5}, r"'policy' must be a list of policy entries, got 'p\\np\\n"),
    ({"policy": [], "q" * 10**6: 1, "r": 2}, r"unknown top-level key\(s\) 'q+\.\.\.q+', 'r'"),
])
def test_echoed_values_are_truncated(config, match):
    message = refused(config, match)
    assert max(len(word) for word in message.split()) <= SHOWN_CHARS + 20


def test_dump_yaml_without_pyyaml_names_the_extra(monkeypatch, tmp_path):
    config = load_config("naive-reuse")
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(config, "yaml"))
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml -> ImportError, as when PyYAML is absent
    with pytest.raises(ConfigError, match=r"YAML configs need PyYAML; pip install 'cachekit\[yaml\]'"):
        dump_config(config, "yaml")
    with pytest.raises(ConfigError, match=r"YAML configs need PyYAML; pip install 'cachekit\[yaml\]'"):
        load_config(path)
    assert json.loads(dump_config(config, "json"))["policy"][0]["type"] == "reuse"


def test_number_validator_refuses_what_is_not_a_finite_number():
    @attrs.frozen
    class Config:
        x: float = attrs.field(validator=fields.number(lo=0))

    for bad in (NAN, INF, -INF, True, "1", None):
        with pytest.raises(cachekit.ConfigError, match=r"field 'x': got .*, expected a finite number >= 0"):
            Config(bad)
    assert Config(10**400).x == 10**400  # a huge int is finite (and does not overflow the check)


def test_registry_lookup_with_a_non_string_name():
    with pytest.raises(RegistryError, match=r"a preset name must be a string, got \{'a': 1\}; registered presets: .*naive-reuse"):
        cachekit.registry().get("preset", {"a": 1})


GOOD = '''
import attrs
import cachekit


@attrs.frozen(kw_only=True)
class Good(cachekit.Policy):
    type_name = "test-good"

    def plan_site(self, site, branch, steps, timesteps):
        return {}


@cachekit.hookimpl
def cachekit_policies():
    return [Good]
'''

RAISES_IN_HOOK = '''
import cachekit


@cachekit.hookimpl
def cachekit_kernels():
    return {"test-half": lambda sources: sources[0]}


@cachekit.hookimpl
def cachekit_policies():
    raise RuntimeError("needs a GPU\\nsecond line")
'''


def distribution(root, name, module, source):
    """A distribution on ``root`` (put on sys.path) with one ``cachekit`` entry point."""
    if source is not None:
        (root / f"{module}.py").write_text(source)
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[cachekit]\n{module} = {module}\n")


@pytest.fixture
def plugins(tmp_path):
    distribution(tmp_path, "ck-good", "ck_good", GOOD)
    distribution(tmp_path, "ck-missing", "ck_missing", None)  # its module does not exist
    distribution(tmp_path, "ck-syntax", "ck_syntax", "def broken(:\n")
    distribution(tmp_path, "ck-hook", "ck_hook", RAISES_IN_HOOK)
    sys.path.insert(0, str(tmp_path))
    yield
    sys.path.remove(str(tmp_path))
    for module in ("ck_good", "ck_missing", "ck_syntax", "ck_hook"):
        sys.modules.pop(module, None)
    cachekit.reload_plugins(keep_code=False)


def test_a_broken_plugin_is_a_warning_and_the_rest_load(plugins):
    with pytest.warns(PluginWarning) as caught:
        reg = cachekit.reload_plugins()
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 3 and all("\n" not in m and len(m) < LONG for m in messages), messages
    assert messages[0].startswith("cachekit: skipped plugin ck-hook 0.1 (entry point 'ck_hook') = ck_hook: RuntimeError: needs a GPU second line")
    assert messages[1].startswith("cachekit: skipped plugin ck-missing 0.1 (entry point 'ck_missing') = ck_missing: ModuleNotFoundError")
    assert messages[2].startswith("cachekit: skipped plugin ck-syntax 0.1 (entry point 'ck_syntax') = ck_syntax: SyntaxError")
    assert "test-good" in reg.names("policy") and "fastercache" in reg.names("policy") and "latte" in reg.names("adapter")
    assert "test-half" not in reg.names("kernel")  # a plugin whose hook raised registers nothing
    assert load_config("test-good").policies[0].type_name == "test-good"


def test_reload_plugins_keeps_code_registrations():
    @attrs.frozen(kw_only=True)
    class FromCode(cachekit.Policy):
        type_name = "test-from-code"

        def plan_site(self, site, branch, steps, timesteps):
            return {}

    try:
        cachekit.register_policy(FromCode)
        cachekit.register_kernel("test-first", lambda sources: sources[0])
        reg = cachekit.reload_plugins()
        assert "test-from-code" in reg.names("policy") and "test-first" in reg.names("kernel")
        assert "register_policy() at" in reg.tables["policy"]["test-from-code"].source
        assert load_config("test-from-code").policies == (FromCode(),)
        assert "test-from-code" in cachekit.reload_plugins().names("policy")  # kept again
    finally:
        reg = cachekit.reload_plugins(keep_code=False)
    assert "test-from-code" not in reg.names("policy") and "reuse" in reg.names("policy")


@pytest.mark.parametrize("blocks", [10**5000, [1, 10**5000], True, [-1], 2.5], ids=["huge", "huge-in-list", "bool", "negative", "float"])
def test_block_indices_that_are_not_small_non_negative_ints(blocks):
    refused({"policy": [{"type": "reuse", "sites": {"blocks": blocks}}]}, r"field 'sites.blocks': got .*, expected a block range")


def test_any_string_survives_a_toml_round_trip(tmp_path):
    """Quotes, backslashes, control characters, DEL and characters beyond the BMP."""
    label = 'say "hi" \\ \x7f \x00 \t\n 𐀀 é'
    config = load_config({"policy": [{"type": "reuse", "label": label, "sites": {"names": ["blocks.1*", "ü[!x]"]}}]})
    path = tmp_path / "c.toml"
    path.write_text(dump_config(config, "toml"), encoding="utf-8")
    assert load_config(path) == config
    with pytest.raises(ConfigError, match=r"cannot write .* to TOML: it holds a lone surrogate"):
        dump_config(load_config({"policy": [{"type": "reuse", "label": "\ud800"}]}), "toml")


@pytest.mark.parametrize("steps, timesteps, match", [
    (NAN, None, "field 'num_inference_steps': got nan, expected an integer >= 1"),
    (2.5, None, "field 'num_inference_steps': got 2.5, expected an integer >= 1"),
    (True, None, "field 'num_inference_steps': got True, expected an integer >= 1"),
    (4, [900.0, NAN, 500.0, 100.0], "field 'timesteps': got nan, expected a finite number"),
    (2, torch.tensor([INF, 1.0]), "field 'timesteps': got inf, expected a finite number"),
])
def test_run_numbers_given_to_enable_are_checked(steps, timesteps, match):
    model = toy.ToyDenoiser()
    toy.register()
    try:
        with pytest.raises(ConfigError, match=match):
            cachekit.enable(model, "fastercache", num_inference_steps=steps, cfg=True, timesteps=timesteps)
        assert not hasattr(model, "_cachekit_session")
    finally:
        cachekit.reload_plugins(keep_code=False)


def test_a_deep_extends_chain_is_refused_clearly(tmp_path):
    """3,000 presets each extending the next: a ConfigError at the limit, not a RecursionError."""
    from cachekit.config import MAX_EXTENDS

    table = cachekit.registry().tables["preset"]
    names = [f"test-chain-{i}" for i in range(3000)]
    try:
        for i, name in enumerate(names):
            path = tmp_path / f"{name}.toml"
            parent = f'extends = "{names[i + 1]}"\n' if i + 1 < len(names) else ""
            path.write_text(parent + '[[policy]]\ntype = "reuse"\n')
            cachekit.registry().add("preset", name, path, "test")
        refused(names[0], rf"'extends' chains more than {MAX_EXTENDS} presets \(test-chain-1 -> test-chain-2 -> \.\.\. -> "
                          rf"test-chain-{MAX_EXTENDS + 1}\); start from a preset nearer the base")
        assert load_config(names[-MAX_EXTENDS]).policies[0].type_name == "reuse"  # a chain within the limit loads
    finally:
        for name in names:
            table.pop(name, None)
