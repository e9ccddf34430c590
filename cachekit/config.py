"""Configs: policies as data, loaded from presets, dicts and TOML/JSON/YAML files, and dumped back."""

from __future__ import annotations

import json
import math
import pathlib
import re
import sys
from typing import Any, Iterable, Union

import attrs

from .errors import ConfigError, FieldError, RegistryError, shown
from .policy import Policy
from .registry import registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

SUFFIXES = (".toml", ".json", ".yaml", ".yml")


@attrs.frozen
class CacheConfig:
    """An ordered set of policies. Order is informative; overlaps are settled by ``priority``."""

    policies: tuple[Policy, ...] = attrs.field(converter=tuple)
    source: str | None = attrs.field(default=None, eq=False)
    #: Provenance of a config written by ``cachekit tune`` (its ``[tuned]`` table), else None.
    tuned: dict[str, Any] | None = None
    #: A generic adapter spec (a config file's ``[adapter]`` table), which ``enable`` uses unless given one.
    adapter: dict[str, Any] | None = None

    def __attrs_post_init__(self) -> None:
        seen: set[str] = set()
        for policy in self.policies:  # one pass: a config may list thousands of entries
            if policy.name in seen:
                raise ConfigError(f"{self.source or 'config'}: two policy entries are named '{policy.name}'; give one a "
                                  "distinct 'label'")
            seen.add(policy.name)
        for policy in self.policies:
            try:
                _check_finite(policy, "")
                policy.check_config(self.policies)
            except FieldError as err:
                raise ConfigError(f"{self.source or 'config'}: policy '{policy.name}': {err}") from None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"policy": [policy_to_dict(p) for p in self.policies]}
        if self.tuned is not None:
            data["tuned"] = dict(self.tuned)
        return data


def _check_finite(value: Any, path: str, depth: int = 0) -> None:
    """Raise FieldError for a NaN or infinite float anywhere in a policy's fields (nested configs,
    lists and mappings included), whatever validators the policy's class declares."""
    if isinstance(value, float) and not math.isfinite(value):
        raise FieldError(path, value, "a finite number")
    if depth > 8:
        return
    if attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            _check_finite(getattr(value, field.name), f"{path}.{field.name}".lstrip("."), depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite(item, f"{path}[{i}]", depth + 1)


ConfigLike = Union[CacheConfig, Policy, Iterable[Policy], dict, str, pathlib.Path]


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """The config entry of one policy: its type and every field (None values left out)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return {"type": policy.type_name, **clean(attrs.asdict(policy, recurse=True))}


def policy_from_dict(entry: dict[str, Any], where: str = "config") -> Policy:
    """Build one policy from its config entry; errors name ``where``, the entry and the field."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: a policy entry must be a table/mapping, got {shown(entry)}")
    entry = dict(entry)
    kind = entry.pop("type", None)
    label = shown(entry.get("label") or kind)
    if kind is None:
        raise ConfigError(f"{where}: policy entry {shown(entry)} has no 'type'; registered policies: {', '.join(registry().names('policy'))}")
    cls = _registered("policy", kind, where)
    valid = [f.name for f in attrs.fields(cls) if f.init]
    for key in entry:
        if key not in valid:
            raise ConfigError(f"{where}: policy {label}: unknown field {shown(key)}; valid fields of '{kind}': {', '.join(valid)}")
    missing = [f.name for f in attrs.fields(cls) if f.init and f.default is attrs.NOTHING and f.name not in entry]
    if missing:
        raise ConfigError(f"{where}: policy {label}: missing required field(s) {', '.join(map(shown, missing))}")
    try:
        return cls(**entry)
    except FieldError as err:
        raise ConfigError(f"{where}: policy {label}: {err}") from None


def _registered(kind: str, name: str, where: str) -> Any:
    try:
        return registry().get(kind, name)
    except RegistryError as err:
        raise ConfigError(f"{where}: {err}") from None


def load_file(path: str | pathlib.Path) -> dict[str, Any]:
    """Read a TOML, JSON or YAML config file (UTF-8) into a mapping; YAML is loaded safely (no tags)."""
    path = pathlib.Path(path)
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"{path}: unknown config format {shown(path.suffix)}; use one of {', '.join(SUFFIXES)}")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {shown(str(path))} does not exist") from None
    except OSError as err:
        raise ConfigError(f"config file {shown(str(path))}: cannot read: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte {raw[err.start]:#04x} on line {line}); save it as UTF-8") from None
    data = _parse(path, text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping with a 'policy' list, got {shown(data)}")
    return data


def _parse(path: pathlib.Path, text: str) -> Any:
    """The file's data; any parser failure is a one-line ConfigError naming the file."""
    yaml = _yaml() if path.suffix in (".yaml", ".yml") else None
    try:
        if yaml is not None:
            return yaml.safe_load(text)
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except RecursionError:
        problem = "nested too deeply"
    except ValueError as err:  # tomllib.TOMLDecodeError, json.JSONDecodeError
        problem = str(err)
    except (yaml.YAMLError if yaml is not None else ()) as err:
        mark = getattr(err, "problem_mark", None)
        problem = str(getattr(err, "problem", None) or err)[:200]
        problem += f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem += "; cachekit reads plain YAML (no tags)" if isinstance(err, yaml.constructor.ConstructorError) else ""
    raise ConfigError(f"{path}: cannot parse: {problem[:300]}")


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigError("YAML configs need PyYAML; pip install 'cachekit[yaml]'") from None
    return yaml


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _entry_name(entry: dict[str, Any]) -> str | None:
    return entry.get("label") or entry.get("type")


#: The most presets an ``extends`` chain may go through.
MAX_EXTENDS = 64


def _expand(data: dict[str, Any], where: str, seen: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Resolve ``extends``: an entry with a preset entry's name is merged into that entry, completed
    with its class's defaults (so a nested override such as ``sites = { blocks = "0" }`` keeps the
    rest of the entry's selector); an entry with another name is added."""
    # "adapter": a generic adapter spec, read by enable; "tuned": a tuned plan's provenance
    allowed = "allowed: 'policy', 'extends', 'adapter', 'tuned'"
    odd = [key for key in data if not isinstance(key, str)]
    if odd:
        raise ConfigError(f"{where}: top-level keys must be strings, got {shown(odd[0])}; {allowed}")
    unknown = sorted(set(data) - {"policy", "extends", "adapter", "tuned"})
    if unknown:
        listed = ", ".join(shown(key) for key in unknown[:6]) + (", ..." if len(unknown) > 6 else "")
        raise ConfigError(f"{where}: unknown top-level key(s) {listed}; {allowed}")
    entries = data.get("policy", [])
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: 'policy' must be a list of policy entries, got {shown(entries)}")
    parent = data.get("extends")
    if parent is None:
        return entries
    if not isinstance(parent, str):
        raise ConfigError(f"{where}: 'extends' must be a preset name, got {shown(parent)}; presets: {', '.join(registry().names('preset'))}")
    if parent in seen:
        raise ConfigError(f"{where}: preset '{parent}' extends itself through {' -> '.join(seen)}")
    if len(seen) >= MAX_EXTENDS:
        raise ConfigError(f"{where}: 'extends' chains more than {MAX_EXTENDS} presets ({seen[0]} -> {seen[1]} -> ... -> "
                          f"{parent}); start from a preset nearer the base")
    path = _registered("preset", parent, f"{where}: extends")
    base = _expand(load_file(path), f"preset '{parent}'", seen + (parent,))
    names: dict[str, int] = {}  # each preset entry's name -> its position (the first, if repeated)
    for i, e in enumerate(base):
        if isinstance(e, dict) and isinstance(_entry_name(e), str):
            names.setdefault(_entry_name(e), i)
    for entry in entries:
        name = _entry_name(entry) if isinstance(entry, dict) else None
        if name is None or not isinstance(name, str) or name not in names:
            base.append(entry)
            continue
        i = names[name]
        kind = base[i].get("type")
        if entry.get("type", kind) != kind:  # another type under the same label replaces the entry
            base[i] = entry
        else:
            full = policy_to_dict(policy_from_dict(base[i], f"preset '{parent}', entry {i}"))
            base[i] = _merge(full, entry)
    return base


def from_dict(data: dict[str, Any], where: str = "config") -> CacheConfig:
    entries = _expand(data, where)
    if not entries:
        raise ConfigError(f"{where}: no policy entries; add at least one [[policy]] with a 'type'")
    tuned = data.get("tuned")
    if tuned is not None and not isinstance(tuned, dict):
        raise ConfigError(f"{where}: 'tuned' must be a table of provenance (as `cachekit tune` writes it), got {shown(tuned)}")
    return CacheConfig(tuple(policy_from_dict(e, f"{where}, entry {i}") for i, e in enumerate(entries)), source=where,
                       tuned=tuned, adapter=data.get("adapter"))


def _listing(names: list[str]) -> str:
    """Registered names for a message, per-model variants (``fastercache/latte``) counted, not listed."""
    general = [n for n in names if "/" not in n]
    variants = len(names) - len(general)
    return (", ".join(general) or "none") + (f" and {variants} per-model variants" if variants else "")


def load_config(config: ConfigLike) -> CacheConfig:
    """Resolve anything a user may pass to ``enable``: a CacheConfig, policies, a dict, a preset
    name, a registered policy name (its defaults) or a config file path."""
    if isinstance(config, CacheConfig):
        return config
    if isinstance(config, Policy):
        return CacheConfig((config,), source=config.name)
    if isinstance(config, dict):
        return from_dict(config)
    if isinstance(config, (str, pathlib.Path)):
        name = str(config)
        reg = registry()
        if name in reg.tables["preset"]:
            return from_dict(load_file(reg.get("preset", name)), f"preset '{name}'")
        if pathlib.Path(name).suffix in SUFFIXES:
            return from_dict(load_file(name), name)
        if name in reg.tables["policy"]:
            return CacheConfig((reg.get("policy", name)(),), source=name)
        raise ConfigError(
            f"{shown(name)} is neither a preset ({_listing(reg.names('preset'))}), a policy "
            f"({_listing(reg.names('policy'))}) nor a config file path ({', '.join(SUFFIXES)}); `cachekit list` shows them all"
        )
    if isinstance(config, Iterable):
        policies = tuple(config)
        if policies and all(isinstance(p, Policy) for p in policies):
            return CacheConfig(policies, source="policies")
    raise ConfigError(
        f"cannot use {shown(config)} as a config; pass a preset or policy name, a config file path, a dict, or Policy objects"
    )


def dump_config(config: CacheConfig, fmt: str = "toml") -> str:
    """Serialise a config as TOML, JSON or YAML text that :func:`load_config` reads back equal."""
    data = config.to_dict()
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt in ("yaml", "yml"):
        return _yaml().safe_dump(data, sort_keys=False)
    if fmt == "toml":
        tables = [_toml_table("[[policy]]", entry) for entry in data["policy"]]
        if "tuned" in data:
            tables.append(_toml_table("[tuned]", data["tuned"]))
        return "\n".join(tables)
    raise ConfigError(f"unknown config format {shown(fmt)}; use toml, json or yaml")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise ConfigError(f"cannot write {shown(value)} to TOML")


def _toml_table(header: str, entry: dict[str, Any]) -> str:
    return header + "\n" + "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in entry.items())


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_str(key)


def _toml_str(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped; no lone surrogates."""
    if any(0xD800 <= ord(c) < 0xE000 for c in text):
        raise ConfigError(f"cannot write {shown(text)} to TOML: it holds a lone surrogate")
    return '"' + "".join(_toml_char(c) for c in text) + '"'


def _toml_char(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    return f"\\u{ord(char):04x}" if ord(char) < 0x20 or ord(char) == 0x7F else char
