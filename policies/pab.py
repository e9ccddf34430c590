"""``pab``: Pyramid Attention Broadcast (arXiv 2408.12588).

Attention outputs are broadcast (reused) with a separate interval and window for spatial,
temporal and cross attention: in its window a kind is computed every ``<kind>`` steps and the last
computed output is reused in between (interval 1 turns a kind off). A kind's window defaults to
``window``. ``compat = "diffusers"`` takes ``diffusers.hooks.PyramidAttentionBroadcastConfig``'s
phase: compute at steps whose index is a multiple of the interval (open timestep windows).
"""

from __future__ import annotations

from typing import Sequence

import attrs

from cachekit import fields
from .reuse import broadcast
from cachekit.policy import Action, Policy, RunInfo, Window
from cachekit.registry import hookimpl
from cachekit.sites import Selector, Site

from ._compat import compat_field, require_timestep_windows


def _optional_window(name: str):
    convert = fields.structured(Window, name)
    return lambda value: None if value is None else convert(value)


@attrs.frozen(kw_only=True)
class Pab(Policy):
    type_name = "pab"

    sites: Selector = attrs.field(factory=lambda: Selector(kinds=("attn",)), converter=fields.structured(Selector, "sites"))
    window: Window = attrs.field(factory=lambda: Window(start=0.2, end=0.9), converter=fields.structured(Window, "window"))
    spatial: int = attrs.field(default=2, validator=fields.integer(lo=1))
    temporal: int = attrs.field(default=4, validator=fields.integer(lo=1))
    cross: int = attrs.field(default=6, validator=fields.integer(lo=1))
    spatial_window: Window | None = attrs.field(default=None, converter=_optional_window("spatial_window"))
    temporal_window: Window | None = attrs.field(default=None, converter=_optional_window("temporal_window"))
    cross_window: Window | None = attrs.field(default=None, converter=_optional_window("cross_window"))
    compat: str = compat_field()

    def __attrs_post_init__(self) -> None:
        require_timestep_windows(self, "window", "spatial_window", "temporal_window", "cross_window")

    def _kind(self, site: Site) -> str:
        """Joint (full 3-D) self-attention broadcasts like spatial attention."""
        return {"attn.temporal": "temporal", "attn.cross": "cross"}.get(site.kind, "spatial")

    def steps(self, site: Site, run: RunInfo) -> list[int]:
        window = getattr(self, f"{self._kind(site)}_window") or self.window
        return window.steps(run.timesteps, run.num_steps)

    def plan_site(self, site: Site, branch: str, steps: Sequence[int], run: RunInfo) -> dict[int, Action]:
        # diffusers counts calls from the run's first step
        return broadcast(steps, getattr(self, self._kind(site)), aligned=self.compat == "diffusers")


@hookimpl
def cachekit_policies() -> list[type]:
    return [Pab]
