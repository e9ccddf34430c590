"""The exceptions cachekit raises. Each message is one line naming what is wrong and what would be right."""

from __future__ import annotations


class CachekitError(Exception):
    """Base class of every error cachekit raises on purpose."""


class ConfigError(CachekitError, ValueError):
    """A policy config, preset or config file is invalid."""


class RegistryError(CachekitError, LookupError):
    """A name is unknown or registered twice."""


class PlanError(CachekitError, ValueError):
    """A step plan cannot be built or does not validate."""


class AdapterError(CachekitError, TypeError):
    """A model has no adapter, or its calls do not match what the adapter declares."""


class EnableError(CachekitError, RuntimeError):
    """A model cannot be enabled (already enabled, or cached by another library)."""


class FieldError(ConfigError):
    """One field of a config holds a value outside what it allows."""

    def __init__(self, field: str, given: object, allowed: str) -> None:
        self.field, self.given, self.allowed = field, given, allowed
        super().__init__(f"field '{field}': got {given!r}, expected {allowed}")
