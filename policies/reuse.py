"""``reuse``: naive feature reuse. In its window a site is computed once ``interval`` steps have
passed since it was last computed, and returns that output in between."""

from __future__ import annotations

from typing import Sequence

import attrs

from cachekit import fields
from cachekit.policy import Action, Policy, RunInfo
from cachekit.registry import hookimpl
from cachekit.sites import Selector, Site


@attrs.frozen(kw_only=True)
class Reuse(Policy):
    """Compute at the window's first step and every ``interval`` steps after; reuse the latest
    computed output in between (a step where the site is not called does not count as computed)."""

    type_name = "reuse"

    sites: Selector = attrs.field(factory=lambda: Selector(kinds=("attn.spatial", "attn.temporal", "attn.joint")),
                                  converter=fields.structured(Selector, "sites"))
    interval: int = attrs.field(default=2, validator=fields.integer(lo=1))

    def plan_site(self, site: Site, branch: str, steps: Sequence[int], run: RunInfo) -> dict[int, Action]:
        return broadcast(steps, self.interval)


def broadcast(steps: Sequence[int], interval: int, aligned: bool = False) -> dict[int, Action]:
    """Compute at the first step and once ``interval`` steps have passed since this policy last
    asked to (``aligned``: at steps whose index is a multiple of ``interval``); in between, reuse
    the latest computed output (the planner finds it, also before the window)."""
    actions: dict[int, Action] = {}
    last = None
    for step in steps:
        if (step % interval == 0) if aligned else (last is None or step - last >= interval):
            actions[step] = Action.compute()
            last = step
        else:
            actions[step] = Action.reuse()
    return actions


@hookimpl
def cachekit_policies() -> list[type]:
    return [Reuse]
