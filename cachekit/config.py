"""Configs: policies as data, loaded from presets, dicts and TOML/JSON/YAML files, and dumped back."""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any, Iterable, Union

import attrs

from .errors import ConfigError, FieldError, RegistryError
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

    def __attrs_post_init__(self) -> None:
        names = [p.name for p in self.policies]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"{self.source or 'config'}: two policy entries are named '{name}'; give one a distinct 'label'")
        for policy in self.policies:
            try:
                policy.check_config(self.policies)
            except FieldError as err:
                raise ConfigError(f"{self.source or 'config'}: policy '{policy.name}': {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"policy": [policy_to_dict(p) for p in self.policies]}


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
        raise ConfigError(f"{where}: a policy entry must be a table/mapping, got {entry!r}")
    entry = dict(entry)
    kind = entry.pop("type", None)
    label = entry.get("label") or kind
    if kind is None:
        raise ConfigError(f"{where}: policy entry {entry!r} has no 'type'; registered policies: {', '.join(registry().names('policy'))}")
    cls = _registered("policy", kind, where)
    valid = [f.name for f in attrs.fields(cls) if f.init]
    for key in entry:
        if key not in valid:
            raise ConfigError(f"{where}: policy '{label}': unknown field '{key}'; valid fields of '{kind}': {', '.join(valid)}")
    try:
        return cls(**entry)
    except FieldError as err:
        raise ConfigError(f"{where}: policy '{label}': {err}") from None


def _registered(kind: str, name: str, where: str) -> Any:
    try:
        return registry().get(kind, name)
    except RegistryError as err:
        raise ConfigError(f"{where}: {err}") from None


def load_file(path: str | pathlib.Path) -> dict[str, Any]:
    """Read a TOML, JSON or YAML config file into a mapping."""
    path = pathlib.Path(path)
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"{path}: unknown config format '{path.suffix}'; use one of {', '.join(SUFFIXES)}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"{path}: YAML configs need PyYAML; pip install 'cachekit[yaml]'") from None
            data = yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{path}: cannot parse: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping with a 'policy' list")
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _entry_name(entry: dict[str, Any]) -> str | None:
    return entry.get("label") or entry.get("type")


def _expand(data: dict[str, Any], where: str, seen: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Resolve ``extends``: entries with a preset entry's name override its fields, others are added."""
    unknown = set(data) - {"policy", "extends", "adapter"}  # "adapter": a generic adapter spec, read by enable
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {', '.join(sorted(unknown))}; allowed: 'policy', "
                          "'extends', 'adapter'")
    entries = data.get("policy", [])
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: 'policy' must be a list of policy entries, got {entries!r}")
    parent = data.get("extends")
    if parent is None:
        return entries
    if parent in seen:
        raise ConfigError(f"{where}: preset '{parent}' extends itself through {' -> '.join(seen)}")
    path = _registered("preset", parent, f"{where}: extends")
    base = _expand(load_file(path), f"preset '{parent}'", seen + (parent,))
    names = [_entry_name(e) for e in base]
    for entry in entries:
        name = _entry_name(entry) if isinstance(entry, dict) else None
        if name in names:
            base[names.index(name)] = _merge(base[names.index(name)], entry)
        else:
            base.append(entry)
    return base


def from_dict(data: dict[str, Any], where: str = "config") -> CacheConfig:
    entries = _expand(data, where)
    if not entries:
        raise ConfigError(f"{where}: no policy entries; add at least one [[policy]] with a 'type'")
    return CacheConfig(
        tuple(policy_from_dict(e, f"{where}, entry {i}") for i, e in enumerate(entries)), source=where
    )


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
            if not pathlib.Path(name).is_file():
                raise ConfigError(f"config file '{name}' does not exist")
            return from_dict(load_file(name), name)
        if name in reg.tables["policy"]:
            return CacheConfig((reg.get("policy", name)(),), source=name)
        raise ConfigError(
            f"'{name}' is neither a preset ({', '.join(reg.names('preset')) or 'none'}), "
            f"a policy ({', '.join(reg.names('policy')) or 'none'}) nor a config file path ({', '.join(SUFFIXES)})"
        )
    if isinstance(config, Iterable):
        policies = tuple(config)
        if policies and all(isinstance(p, Policy) for p in policies):
            return CacheConfig(policies, source="policies")
    raise ConfigError(
        f"cannot use {config!r} as a config; pass a preset or policy name, a config file path, a dict, or Policy objects"
    )


def dump_config(config: CacheConfig, fmt: str = "toml") -> str:
    """Serialise a config as TOML, JSON or YAML text that :func:`load_config` reads back equal."""
    data = config.to_dict()
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt in ("yaml", "yml"):
        import yaml

        return yaml.safe_dump(data, sort_keys=False)
    if fmt == "toml":
        return "\n".join(_toml_table(entry) for entry in data["policy"])
    raise ConfigError(f"unknown config format '{fmt}'; use toml, json or yaml")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise ConfigError(f"cannot write {value!r} to TOML")


def _toml_table(entry: dict[str, Any]) -> str:
    return "[[policy]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in entry.items())
