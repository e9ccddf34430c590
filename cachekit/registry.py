"""The plugin registry: pluggy hookspecs, entry-point loading and name look-up.

Built-in policies, adapters, presets and reconstruction kernels register through the ``cachekit``
entry-point group exactly as a third-party distribution does.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import pathlib
from typing import Any, Callable

import pluggy

from .errors import RegistryError

GROUP = "cachekit"
hookspec = pluggy.HookspecMarker(GROUP)
hookimpl = pluggy.HookimplMarker(GROUP)


class Specs:
    """What a cachekit plugin may provide. Every hook returns a list (or a dict for presets)."""

    @hookspec
    def cachekit_policies(self) -> list[type]:
        """Policy classes (subclasses of :class:`cachekit.Policy`), registered under their ``type_name``."""

    @hookspec
    def cachekit_adapters(self) -> list[type]:
        """Adapter classes (subclasses of :class:`cachekit.Adapter`), registered under their ``name``."""

    @hookspec
    def cachekit_presets(self) -> dict[str, pathlib.Path]:
        """Preset name -> config file (TOML, JSON or YAML)."""

    @hookspec
    def cachekit_kernels(self) -> dict[str, Callable[..., Any]]:
        """Reconstruction kernel name -> callable ``kernel(sources, **params) -> tensor``."""

    @hookspec
    def cachekit_schedules(self) -> dict[str, Callable[[float], float]]:
        """Weight schedule name -> callable ``schedule(progress in [0, 1]) -> factor``."""


class Entry:
    """A registered object and where it came from."""

    __slots__ = ("name", "obj", "source")

    def __init__(self, name: str, obj: Any, source: str) -> None:
        self.name, self.obj, self.source = name, obj, source


class Registry:
    """Name tables for policies, adapters, presets and kernels, filled from plugins."""

    KINDS = ("policy", "adapter", "preset", "kernel", "schedule")
    TITLES = {"policy": "policies", "adapter": "adapters", "preset": "presets", "kernel": "kernels", "schedule": "schedules"}

    def __init__(self, load_entry_points: bool = True) -> None:
        self.manager = pluggy.PluginManager(GROUP)
        self.manager.add_hookspecs(Specs)
        self.tables: dict[str, dict[str, Entry]] = {kind: {} for kind in self.KINDS}
        if load_entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        seen: set[tuple[str, str]] = set()
        for dist in importlib.metadata.distributions():
            for ep in dist.entry_points:
                if ep.group != GROUP or (ep.name, ep.value) in seen:
                    continue
                seen.add((ep.name, ep.value))
                self.add_plugin(ep.load(), f"{dist.metadata['Name']} {dist.version} (entry point '{ep.name}')")

    def add_plugin(self, plugin: Any, source: str) -> None:
        """Register a plugin object (usually a module with hookimpls); ``source`` names where it came from."""
        self.manager.register(plugin, name=source)
        others = [p for p in self.manager.get_plugins() if p is not plugin]

        def results(spec: str) -> list:
            return self.manager.subset_hook_caller(spec, remove_plugins=others)()

        for policies in results("cachekit_policies"):
            for cls in policies:
                self.add("policy", cls.type_name, cls, source)
        for adapters in results("cachekit_adapters"):
            for cls in adapters:
                self.add("adapter", cls.name, cls, source)
        for presets in results("cachekit_presets"):
            for name, path in presets.items():
                self.add("preset", name, pathlib.Path(path), source)
        for kernels in results("cachekit_kernels"):
            for name, fn in kernels.items():
                self.add("kernel", name, fn, source)
        for schedules in results("cachekit_schedules"):
            for name, fn in schedules.items():
                self.add("schedule", name, fn, source)

    def add(self, kind: str, name: str, obj: Any, source: str) -> None:
        table = self.tables[kind]
        if name in table:
            raise RegistryError(f"{kind} '{name}' is registered twice: by {table[name].source} and by {source}")
        table[name] = Entry(name, obj, source)

    def get(self, kind: str, name: str) -> Any:
        table = self.tables[kind]
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            raise RegistryError(f"unknown {kind} '{name}'; registered {kind}s: {known}")
        return table[name].obj

    def names(self, kind: str) -> list[str]:
        return sorted(self.tables[kind])

    def entries(self, kind: str) -> list[Entry]:
        return [self.tables[kind][n] for n in self.names(kind)]


_registry: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, loaded from entry points on first use."""
    global _registry
    if _registry is None:
        _registry = Registry()
    return _registry


def reload() -> Registry:
    """Forget registrations and load entry points again (after installing a plugin)."""
    global _registry
    _registry = None
    return registry()


def _caller_source() -> str:
    frame = inspect.stack()[2]
    return f"{frame.filename}:{frame.lineno}"


def register_policy(cls: type) -> type:
    """Register a policy class from code (a notebook, a script). Usable as a decorator."""
    registry().add("policy", cls.type_name, cls, f"register_policy() at {_caller_source()}")
    return cls


def register_adapter(cls: type) -> type:
    """Register an adapter class from code. Usable as a decorator."""
    registry().add("adapter", cls.name, cls, f"register_adapter() at {_caller_source()}")
    return cls


def register_kernel(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register a reconstruction kernel from code."""
    registry().add("kernel", name, fn, f"register_kernel() at {_caller_source()}")
    return fn
