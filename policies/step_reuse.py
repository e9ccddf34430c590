"""``step_reuse``: naive step skipping. The whole denoiser output is computed every ``interval``
steps of the window and reused in between (every site inside is then not called)."""

from __future__ import annotations

import attrs

from cachekit import fields
from .reuse import Reuse
from cachekit.policy import Window
from cachekit.registry import hookimpl
from cachekit.sites import Selector


@attrs.frozen(kw_only=True)
class StepReuse(Reuse):
    type_name = "step_reuse"

    sites: Selector = attrs.field(factory=lambda: Selector(kinds=("denoiser",)), converter=fields.structured(Selector, "sites"))
    window: Window = attrs.field(factory=lambda: Window(start=0.3, end=0.9), converter=fields.structured(Window, "window"))


@hookimpl
def cachekit_policies() -> list[type]:
    return [StepReuse]
