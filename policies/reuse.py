"""``reuse``: naive feature reuse. In its window a site is computed once ``interval`` steps have
passed since it was last computed, and returns that output in between."""

from __future__ import annotations

from typing import Sequence

import attrs

from cachekit import fields
from cachekit.policy import Action, Policy
from cachekit.registry import hookimpl
from cachekit.sites import Selector, Site


@attrs.frozen(kw_only=True)
class Reuse(Policy):
    """Compute at the window's first step and every ``interval`` steps after; reuse in between
    (a step where the site is not called does not count as computed)."""

    type_name = "reuse"

    sites: Selector = attrs.field(factory=lambda: Selector(kinds=("attn.spatial", "attn.temporal")),
                                  converter=fields.structured(Selector, "sites"))
    interval: int = attrs.field(default=2, validator=fields.integer(lo=1))

    def plan_site(self, site: Site, branch: str, steps: Sequence[int], timesteps: Sequence[float] | None) -> dict[int, Action]:
        return broadcast(site, branch, steps, self.interval)


def broadcast(site: Site, branch: str, steps: Sequence[int], interval: int, aligned: bool = False) -> dict[int, Action]:
    """Compute once ``interval`` steps have passed since the last computation (``aligned``: at steps
    whose index is a multiple of ``interval``, the step before the window counting as computed);
    reuse the last computed output in between."""
    actions: dict[int, Action] = {}
    last = steps[0] - 1 if aligned and steps[0] > 0 else None
    for step in steps:
        if last is None or (step % interval == 0 if aligned else step - last >= interval):
            actions[step] = Action.compute()
            last = step
        else:
            actions[step] = Action.reuse((last, site.name, branch))
    return actions


@hookimpl
def cachekit_policies() -> list[type]:
    return [Reuse]
