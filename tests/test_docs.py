"""The docs stay true to the code.

- docs/config-reference.md has a field table per built-in policy (and for the selector and the
  window) between ``<!-- fields:NAME -->`` and ``<!-- /fields:NAME -->``, one row
  ``| name | type | default | allowed |`` per field. The names must be the attrs init fields of the
  class and each default, written as a TOML value (``None`` for an unset key), must convert to the
  attrs default.
- Every fenced ``toml`` block holding ``[[policy]]`` in config-reference.md, writing-a-policy.md and diffusers-compat.md
  loads with ``cachekit.load_config`` from a .toml file. The policy types available are cachekit's
  built-ins plus those of the plugin modules the doc shows in full: fenced ``python`` blocks whose
  first line is ``# <module>.py``, executed and registered as plugins.
- README's config example, loaded from a file, plans what the README says it does.
- A fenced ``python`` block of moving-shapes.md followed by a plain fenced block prints that block,
  each figure to its last shown digit.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pathlib
import re
import sys
import types
from typing import Any

import attrs
import pytest

import cachekit
from cachekit.policy import Window
from cachekit.registry import GROUP, Registry
from cachekit.sites import Selector

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
REFERENCE = DOCS / "config-reference.md"
CONFIG_DOCS = ("config-reference.md", "writing-a-policy.md", "diffusers-compat.md")


def builtin_policies() -> list[type]:
    """Registered policies that ship with cachekit (plugins installed beside it document themselves)."""
    return [e.obj for e in cachekit.registry().entries("policy") if e.obj.__module__.startswith("cachekit.")]


TABLES = [(cls.type_name, cls) for cls in builtin_policies()] + [("selector", Selector), ("window", Window)]


def field_table(text: str, name: str) -> dict[str, str]:
    """Field name -> documented default (backticks stripped) of the table marked ``name``."""
    match = re.search(rf"<!-- fields:{re.escape(name)} -->\n(.*?)<!-- /fields:{re.escape(name)} -->", text, re.S)
    assert match, f"docs/config-reference.md has no table marked <!-- fields:{name} -->"
    rows: dict[str, str] = {}
    for line in match.group(1).splitlines():
        line = line.strip()
        if not line.startswith("|") or re.fullmatch(r"\|[\s|:-]+\|", line):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 4, f"fields:{name}: row {line!r} is not | name | type | default | allowed |"
        field, _, default, _ = (c.strip("`").strip() for c in cells)
        if field == "name":  # the header
            continue
        assert field not in rows, f"fields:{name}: '{field}' is documented twice"
        rows[field] = default
    return rows


def convert(attribute: attrs.Attribute, value: Any) -> Any:
    converter = attribute.converter
    if converter is None:
        return value
    if hasattr(attrs, "Converter") and isinstance(converter, attrs.Converter):
        converter = converter.converter
    return converter(value)


def documented_default(attribute: attrs.Attribute, text: str) -> Any:
    value = None if text == "None" else tomllib.loads(f"value = {text}")["value"]
    return convert(attribute, value)


def attrs_default(attribute: attrs.Attribute) -> Any:
    default = attribute.default
    if isinstance(default, attrs.Factory):
        assert not default.takes_self, f"{attribute.name}: a takes_self factory cannot be documented as a value"
        default = default.factory()
    return convert(attribute, default)


@pytest.mark.parametrize("name, cls", TABLES, ids=[name for name, _ in TABLES])
def test_field_table_matches_class(name: str, cls: type) -> None:
    rows = field_table(REFERENCE.read_text(), name)
    fields = {f.name: f for f in attrs.fields(cls) if f.init}
    assert set(rows) == set(fields), (
        f"fields:{name}: documented {sorted(rows)}, but {cls.__qualname__} has {sorted(fields)}"
    )
    for field, text in rows.items():
        attribute = fields[field]
        if text == "required":
            assert attribute.default is attrs.NOTHING, f"fields:{name}: '{field}' is documented as required but has a default"
            continue
        assert attribute.default is not attrs.NOTHING, f"fields:{name}: '{field}' has no default; document it as `required`"
        expected = attrs_default(attribute)
        got = documented_default(attribute, text)
        assert got == expected and repr(got) == repr(expected), (
            f"fields:{name}: '{field}' is documented with default {text} ({got!r}), but the class default is {expected!r}"
        )


def test_every_field_table_has_a_class() -> None:
    marked = set(re.findall(r"<!-- fields:([\w.-]+) -->", REFERENCE.read_text()))
    assert marked <= {name for name, _ in TABLES}, f"tables for unknown policies: {sorted(marked - {n for n, _ in TABLES})}"


def fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


def doc_plugins(doc: str) -> list[types.ModuleType]:
    """The plugin modules a doc shows in full (python blocks starting with ``# <module>.py``), executed."""
    modules = []
    for block in fenced((DOCS / doc).read_text(), "python"):
        match = re.fullmatch(r"#\s*(\w+)\.py", block.splitlines()[0].strip()) if block.strip() else None
        if match:
            module = types.ModuleType(match.group(1))
            exec(compile(block, f"docs/{doc}: {match.group(1)}.py", "exec"), module.__dict__)
            modules.append(module)
    return modules


def docs_registry(plugins: list[types.ModuleType]) -> Registry:
    """cachekit's own entry points plus the doc's plugins, and nothing else installed or registered."""
    registry = Registry(load_entry_points=False)
    for ep in importlib.metadata.distribution("cachekit").entry_points:
        if ep.group == GROUP:
            registry.add_plugin(ep.load(), f"cachekit (entry point '{ep.name}')")
    for module in plugins:
        registry.add_plugin(module, f"docs plugin {module.__name__}.py")
    return registry


CONFIG_BLOCKS = [
    (doc, i, block)
    for doc in CONFIG_DOCS
    for i, block in enumerate(b for b in fenced((DOCS / doc).read_text(), "toml") if "[[policy]]" in b)
]


@pytest.mark.parametrize("doc, index, block", CONFIG_BLOCKS, ids=[f"{d}#{i}" for d, i, _ in CONFIG_BLOCKS])
def test_config_example_loads(doc: str, index: int, block: str, tmp_path: pathlib.Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    registry = docs_registry(doc_plugins(doc))
    monkeypatch.setattr(importlib.import_module("cachekit.registry"), "_registry", registry)
    data = tomllib.loads(block)
    entries = data.get("policy", [])
    for entry in entries if isinstance(entries, list) else [entries]:
        assert entry.get("type") in registry.names("policy"), (
            f"{doc} toml block {index}: policy type {entry.get('type')!r} is neither built in nor defined by the "
            f"doc's plugin modules; registered: {registry.names('policy')}"
        )
    path = tmp_path / "config.toml"
    path.write_text(block)
    config = cachekit.load_config(path)
    assert config.policies
    assert cachekit.load_config(tomllib.loads(cachekit.dump_config(config))) == config


def test_readme_config_example(tmp_path: pathlib.Path) -> None:
    """README's config, written to a file, extends naive-reuse with its own ``reuse`` entry (replacing
    the preset's, by name) and on the demo model reuses spatial and temporal attention every other
    step inside its window."""
    from cachekit.demo import tiny_latte_pipeline

    blocks = [b for b in fenced((DOCS.parent / "README.md").read_text(), "toml") if "[[policy]]" in b]
    assert len(blocks) == 1
    path = tmp_path / "config.toml"
    path.write_text(blocks[0])
    session = cachekit.enable(tiny_latte_pipeline(), path)
    [policy] = session.config.policies
    assert (policy.type_name, policy.name, policy.interval) == ("reuse", "reuse", 2)
    assert policy.sites == Selector(kinds=("attn.spatial", "attn.temporal"), blocks="0-13")
    assert policy.window == Window(start=0.2, end=0.9)
    plan = session.plan_for(10)  # steps 2..8 in the window: the first computes, then every other reuses
    rows = dict(line.rsplit(maxsplit=1) for line in plan.grid().splitlines()[1:])
    assert {site for site, row in rows.items() if row != "C" * 10} == {
        f"blocks.{i}.attn.{kind} [{branch}]" for i in (0, 1) for kind in ("spatial", "temporal") for branch in ("uncond", "cond")}
    assert {row for row in rows.values() if row != "C" * 10} == {"CCCRCRCRCC"}


#: Docs whose python examples print figures, each followed by a plain fenced block of what it prints.
FIGURE_DOCS = ("moving-shapes.md",)
NUMBER = re.compile(r"-?\d+(?:\.(\d+))?")


def printed_examples(doc: str) -> list[tuple[str, str]]:
    """(code, printed) of each fenced python block of ``doc`` followed directly by a plain fenced block."""
    return re.findall(r"```python\n(.*?)```\n\n```\n(.*?)```", (DOCS / doc).read_text(), re.S)


def same_figures(got: str, want: str) -> bool:
    """The same text, each number within one unit of the last digit ``want`` shows (rounding)."""
    if NUMBER.sub("#", got) != NUMBER.sub("#", want):
        return False
    return all(abs(float(g.group()) - float(w.group())) <= 10 ** -len(w.group(1) or "")
               for g, w in zip(NUMBER.finditer(got), NUMBER.finditer(want)))


def run_example(code: str) -> str:
    import contextlib
    import io
    import warnings

    out = io.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        exec(compile(code, "<doc example>", "exec"), {"__name__": "doc_example"})
    return out.getvalue()


@pytest.mark.parametrize("doc", FIGURE_DOCS)
def test_printed_figures_are_what_the_examples_print(doc):
    examples = printed_examples(doc)
    assert examples, f"{doc} has no python example followed by its output"
    for code, printed in examples:
        got = run_example(code)
        assert same_figures(got, printed), f"{doc}: the example prints {got!r}, the doc shows {printed!r}"


def test_the_moving_shapes_example_compares_like_with_like():
    """With a config that computes every node, the example's two calls give the same clip: both
    start from the same noise."""
    code = printed_examples("moving-shapes.md")[0][0]
    assert '"fastercache"' in code and "steps=30" in code
    code = code.replace('"fastercache"', '{"policy": [{"type": "reuse", "interval": 1}]}').replace("steps=30", "steps=4")
    assert run_example(code) == "PSNR inf dB\n"
