"""``reuse``: naive feature reuse. Compute a site every ``interval`` steps of the window and return
the last computed output in between."""

from __future__ import annotations

from typing import Sequence

import attrs

from cachekit import fields
from cachekit.policy import Action, Policy
from cachekit.registry import hookimpl
from cachekit.sites import Selector, Site


@attrs.frozen(kw_only=True)
class Reuse(Policy):
    """Compute at the window's first step and every ``interval`` steps after; reuse in between."""

    type_name = "reuse"

    sites: Selector = attrs.field(factory=lambda: Selector(kinds=("attn.spatial", "attn.temporal")),
                                  converter=fields.structured(Selector))
    interval: int = attrs.field(default=2, validator=fields.integer(lo=1))

    def plan_site(self, site: Site, branch: str, steps: Sequence[int], timesteps: Sequence[float] | None) -> dict[int, Action]:
        actions: dict[int, Action] = {}
        for i, step in enumerate(steps):
            if i % self.interval == 0:
                actions[step] = Action.compute()
                last = (step, site.name, branch)
            else:
                actions[step] = Action.reuse(last)
        return actions


@hookimpl
def cachekit_policies() -> list[type]:
    return [Reuse]
