"""Field helpers the schedule policies share: an absolute step phase and a boolean."""

from __future__ import annotations

from typing import Any

import attrs

from cachekit import fields
from cachekit.errors import FieldError


def optional_phase(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """None, or a step index modulo the policy's ``interval`` (checked against it by :func:`check_phase`)."""
    if value is not None:
        fields.integer(lo=0)(instance, attribute, value)


def check_phase(policy: Any) -> None:
    if policy.phase is not None and policy.phase >= policy.interval:
        raise FieldError("phase", policy.phase, f"an integer in [0, interval - 1] = [0, {policy.interval - 1}]")


def boolean(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise FieldError(attribute.name, value, "true or false")


def on_phase(step: int, first: int, interval: int, phase: int | None) -> bool:
    """Whether ``step`` is an ``interval``-th step: counted from ``first`` (the window's first
    step), or (``phase``) where the step index modulo ``interval`` equals ``phase``."""
    return (step - first) % interval == 0 if phase is None else step % interval == phase
