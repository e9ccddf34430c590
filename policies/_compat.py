"""Shared pieces of the policies that offer diffusers' numerics (``compat = "diffusers"``)."""

from __future__ import annotations

from typing import Any

import attrs

from cachekit import fields
from cachekit.errors import FieldError
from cachekit.policy import Window

COMPAT_MODES = ("none", "diffusers")


def compat_field() -> Any:
    return attrs.field(default="none", validator=fields.one_of(*COMPAT_MODES))


def require_timestep_windows(policy: Any, *names: str) -> None:
    """diffusers' windows are open timestep ranges: in compat mode every window must use that unit."""
    if policy.compat != "diffusers":
        return
    for name in names:
        window: Window | None = getattr(policy, name)
        if window is not None and window.unit != "timestep":
            raise FieldError(f"{name}.unit", window.unit, "'timestep' when compat = 'diffusers' (diffusers' ranges are open timestep intervals)")
