"""The plugin registry: pluggy hookspecs, entry-point loading and name look-up.

Built-in policies, adapters, presets and reconstruction kernels register through the ``cachekit``
entry-point group exactly as a third-party distribution does.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import pathlib
import warnings
from typing import Any, Callable, Iterator

import pluggy

from .errors import CachekitError, PlanError, PluginWarning, RegistryError, shown
from .policy import Policy
from .sites import Site

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
    """Name tables for policies, adapters, presets and kernels, filled from plugins and from code.

    A plugin that fails to import or whose hooks raise is skipped with a :class:`PluginWarning`
    naming its distribution and entry point; the others load.
    """

    KINDS = ("policy", "adapter", "preset", "kernel", "schedule")
    TITLES = {"policy": "policies", "adapter": "adapters", "preset": "presets", "kernel": "kernels", "schedule": "schedules"}

    def __init__(self, load_entry_points: bool = True) -> None:
        self.manager = pluggy.PluginManager(GROUP)
        self.manager.add_hookspecs(Specs)
        self.tables: dict[str, dict[str, Entry]] = {kind: {} for kind in self.KINDS}
        #: What ``register_*`` added from code, as ``(kind, name, obj, source)``: kept by :func:`reload`.
        self.from_code: list[tuple[str, str, Any, str]] = []
        if load_entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        seen: set[tuple[str, str]] = set()
        # cachekit's own entry points first: a plugin reusing a built-in's name cannot displace it
        dists = sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"] != "cachekit")
        for dist in dists:
            for ep in dist.entry_points:
                if ep.group != GROUP or (ep.name, ep.value) in seen:
                    continue
                seen.add((ep.name, ep.value))
                source = f"{dist.metadata['Name']} {dist.version} (entry point '{ep.name}')"
                try:
                    self.add_plugin(ep.load(), source, skip_duplicates=True)
                except Exception as err:  # a broken plugin must not take the others down
                    message = " ".join(str(err).split())[:200]
                    warnings.warn(f"cachekit: skipped plugin {source} = {ep.value}: {type(err).__name__}: {message}",
                                  PluginWarning, stacklevel=2)

    def add_plugin(self, plugin: Any, source: str, skip_duplicates: bool = False) -> None:
        """Register a plugin object (usually a module with hookimpls); ``source`` names where it came from.

        Its hooks are all called before anything is filed, so a hook that raises registers nothing.
        A name registered already is an error, or with ``skip_duplicates`` (entry points) skipped
        with a PluginWarning naming both sources: the first registration stands."""
        self.manager.register(plugin, name=source)
        try:
            entries = self._provided(plugin)
        except Exception:
            self.manager.unregister(plugin)
            raise
        for kind, name, obj in entries:
            held = self.tables[kind].get(name) if skip_duplicates else None
            if held is not None:
                warnings.warn(f"cachekit: skipped {kind} '{name}' of {source}: already registered by {held.source}, "
                              "which stands", PluginWarning, stacklevel=3)
                continue
            self.add(kind, name, obj, source)

    def _provided(self, plugin: Any) -> list[tuple[str, str, Any]]:
        others = [p for p in self.manager.get_plugins() if p is not plugin]

        def results(spec: str) -> list:
            return self.manager.subset_hook_caller(spec, remove_plugins=others)()

        entries = [("policy", cls.type_name, cls) for policies in results("cachekit_policies") for cls in policies]
        entries += [("adapter", cls.name, cls) for adapters in results("cachekit_adapters") for cls in adapters]
        for kind, spec in (("preset", "cachekit_presets"), ("kernel", "cachekit_kernels"), ("schedule", "cachekit_schedules")):
            for table in results(spec):
                entries += [(kind, name, pathlib.Path(obj) if kind == "preset" else obj) for name, obj in table.items()]
        return entries

    def add(self, kind: str, name: str, obj: Any, source: str) -> None:
        table = self.tables[kind]
        if name in table:
            raise RegistryError(f"{kind} '{name}' is registered twice: by {table[name].source} and by {source}")
        table[name] = Entry(name, obj, source)

    def add_from_code(self, kind: str, name: str, obj: Any, source: str) -> None:
        """``add``, remembered so that :func:`reload` registers it again."""
        self.add(kind, name, obj, source)
        self.from_code.append((kind, name, obj, source))

    def get(self, kind: str, name: str) -> Any:
        table = self.tables[kind]
        if not isinstance(name, str) or name not in table:
            known = ", ".join(sorted(table)) or "none"
            what = f"unknown {kind}" if isinstance(name, str) else f"a {kind} name must be a string, got"
            raise RegistryError(f"{what} {shown(name)}; registered {self.TITLES[kind]}: {known}")
        return table[name].obj

    def names(self, kind: str) -> list[str]:
        return sorted(self.tables[kind])

    def entries(self, kind: str) -> list[Entry]:
        return [self.tables[kind][n] for n in self.names(kind)]


    def source_of(self, kind: str, cls: type) -> str:
        """Where ``cls`` (or the nearest registered class it derives from) was registered from."""
        for base in cls.__mro__:
            for entry in self.tables[kind].values():
                if entry.obj is base:
                    return entry.source
        return f"module {cls.__module__}, not registered"


_registry: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, loaded from entry points on first use."""
    global _registry
    if _registry is None:
        _registry = Registry()
    return _registry


def reload(keep_code: bool = True) -> Registry:
    """Load the entry points again (after installing a plugin into a running process). What was
    registered from code (``register_policy`` ...) is kept unless ``keep_code`` is False."""
    global _registry
    kept = _registry.from_code if _registry is not None and keep_code else []
    _registry = Registry()
    for registration in kept:
        _registry.add_from_code(*registration)
    return _registry


def _caller_source() -> str:
    frame = inspect.stack()[2]
    return f"{frame.filename}:{frame.lineno}"


def register_policy(cls: type) -> type:
    """Register a policy class from code (a notebook, a script). Usable as a decorator."""
    registry().add_from_code("policy", cls.type_name, cls, f"register_policy() at {_caller_source()}")
    return cls


def register_adapter(cls: type) -> type:
    """Register an adapter class from code. Usable as a decorator."""
    registry().add_from_code("adapter", cls.name, cls, f"register_adapter() at {_caller_source()}")
    return cls


def register_kernel(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register a reconstruction kernel from code."""
    registry().add_from_code("kernel", name, fn, f"register_kernel() at {_caller_source()}")
    return fn


@contextlib.contextmanager
def blaming_policies() -> Iterator[None]:
    """An error that policy code raised, or that the planner met in what a policy returned, is raised
    again as a PlanError naming the policy, its type and where that type was registered from."""
    try:
        yield
    except CachekitError:
        raise
    except Exception as error:
        policy = site = None
        tb = error.__traceback__
        while tb is not None:  # the innermost frame that holds a policy: its own method or the planner's
            local = tb.tb_frame.f_locals
            found = next((v for v in (local.get("self"), local.get("policy")) if isinstance(v, Policy)), None)
            policy = found or policy
            site = local["site"] if isinstance(local.get("site"), Site) else site
            tb = tb.tb_next
        if policy is None:
            raise
        where = f" while planning {site.name}" if isinstance(site, Site) else ""
        source = registry().source_of("policy", type(policy))
        message = " ".join(str(error).split())
        message = message if len(message) <= 200 else message[:197] + "..."
        raise PlanError(f"policy '{policy.name}' (type '{type(policy).type_name}', from {source}) "
                        f"failed{where}: {type(error).__name__}: {message}; plan_site(site, branch, "
                        "steps, run) must return a dict mapping some of the given steps to Action objects") from error
