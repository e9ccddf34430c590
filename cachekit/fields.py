"""Checks of user numbers and names, and attrs validators and converters for policy configs; each
failure raises a FieldError naming the field."""

from __future__ import annotations

import math
from typing import Any, Callable

import attrs

from .errors import FieldError

Validator = Callable[[Any, attrs.Attribute, Any], None]


def require_integer(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` if it is an int (not a bool) within [lo, hi], else a FieldError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise FieldError(name, value, f"an integer{_bounds(lo, hi)}")
    return value


def require_number(name: str, value: Any, lo: float | None = None, hi: float | None = None) -> float:
    """``value`` if it is a finite int or float (not a bool, NaN or infinite) within [lo, hi]."""
    if not is_finite_number(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise FieldError(name, value, f"a finite number{_bounds(lo, hi)}")
    return value


def integer(lo: int | None = None, hi: int | None = None) -> Validator:
    """An int (not a bool) within [lo, hi]."""
    return lambda instance, attribute, value: require_integer(attribute.name, value, lo, hi)


def number(lo: float | None = None, hi: float | None = None) -> Validator:
    """A finite real number (int or float, not a bool, not NaN or infinite) within [lo, hi]."""
    return lambda instance, attribute, value: require_number(attribute.name, value, lo, hi)


def one_of(*choices: str, name: str | None = None) -> Validator:
    """One of ``choices``; ``name`` overrides the field name shown in errors (e.g. "window.unit")."""

    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise FieldError(name or attribute.name, value, "one of " + ", ".join(repr(c) for c in choices))

    return check


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is neither NaN nor infinite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)


def string(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """A non-empty string (a name: of a schedule, a kernel, a mode)."""
    if not isinstance(value, str) or not value:
        raise FieldError(attribute.name, value, "a non-empty string")


def optional_str(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise FieldError(attribute.name, value, "a string")


def _bounds(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def structured(cls: type, name: str) -> Callable[[Any], Any]:
    """Converter for the field ``name``: build ``cls`` from a mapping, pass an instance through;
    anything else, or an unknown key, is an error."""

    def convert(value: Any) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise FieldError(name, value, f"a table/mapping of {cls.__name__} fields")
        valid = [f.name for f in attrs.fields(cls)]
        for key in value:
            if key not in valid:
                raise FieldError(f"{name}.{key}", value[key], f"a known field ({', '.join(valid)})")
        return cls(**value)

    return convert
