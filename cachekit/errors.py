"""The exceptions cachekit raises. Each message is one line naming what is wrong and what would be right."""

from __future__ import annotations

import reprlib

#: The longest an echoed value may be in a message; longer ones are cut with "...".
SHOWN_CHARS = 120



class _Bounded(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        return f"<{x.bit_length()}-bit int>" if x.bit_length() > 256 else super().repr_int(x, level)


_repr = _Bounded()
_repr.maxlevel, _repr.maxstring, _repr.maxother = 3, 60, 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = _repr.maxfrozenset = 6


def shown(value: object) -> str:
    """``repr(value)`` bounded in length and depth, for echoing user input in a message
    (a YAML alias bomb or a megabyte string stays a short line)."""
    try:
        text = _repr.repr(value).replace("\n", "\\n")
    except Exception:  # a huge int, or an object whose __repr__ fails
        text = f"<{type(value).__name__} that cannot be shown>"
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


class CachekitError(Exception):
    """Base class of every error cachekit raises on purpose. Its message is always one line."""

    def __str__(self) -> str:
        return " ".join(super().__str__().splitlines())


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
        super().__init__(f"field '{field}': got {shown(given)}, expected {allowed}")


class PluginWarning(UserWarning):
    """A plugin (an entry point of the ``cachekit`` group) could not be loaded and was skipped."""
