"""``schedule``: an explicit static plan — the sites compute at the listed steps and are forecast in
between with the ``taylor`` kernel of ``order`` from the latest computed steps (order 0: the latest
output reused), as TaylorSeer forecasts between its full steps. It is what ``cachekit tune`` writes:
the steps a search chose for one model, step count and budget, readable and editable.

``compute`` indexes a run of ``num_steps`` steps. A run of another length maps each listed step to
the same fraction of the run (``round(step * n / num_steps)``) and warns once that the plan was
made for ``num_steps``. The first step of the window always computes (nothing is cached before it).
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import attrs

from cachekit import fields
from cachekit.errors import FieldError
from cachekit.policy import Action, Policy, RunInfo
from cachekit.registry import hookimpl
from cachekit.sites import Selector, Site

from .taylorseer import LITE, forecast_actions


def _steps(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, tuple) or not value or any(isinstance(v, bool) or not isinstance(v, int) or v < 0
                                                        for v in value):
        raise FieldError(attribute.name, value, "a non-empty list of step indices (integers >= 0)")
    if list(value) != sorted(set(value)):
        raise FieldError(attribute.name, value, "step indices in ascending order, each once")


def _to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen(kw_only=True)
class Schedule(Policy):
    """Compute the sites at the steps listed in ``compute``; forecast them in between."""

    type_name = "schedule"

    compute: tuple[int, ...] = attrs.field(converter=_to_tuple, validator=_steps)
    num_steps: int = attrs.field(validator=fields.integer(lo=1))
    order: int = attrs.field(default=2, validator=fields.integer(lo=0, hi=4))
    sites: Selector = attrs.field(default=LITE, converter=fields.structured(Selector, "sites"))

    def __attrs_post_init__(self) -> None:
        if self.compute[-1] >= self.num_steps:
            raise FieldError("compute", list(self.compute), f"steps of a {self.num_steps}-step run (0..{self.num_steps - 1})")

    def computed(self, num_steps: int) -> frozenset[int]:
        """The steps that compute in a run of ``num_steps``: the listed ones, mapped by fraction of the run."""
        if num_steps == self.num_steps:
            return frozenset(self.compute)
        return frozenset(min(round(step * num_steps / self.num_steps), num_steps - 1) for step in self.compute)

    def plan_site(self, site: Site, branch: str, steps: Sequence[int], run: RunInfo) -> dict[int, Action]:
        if run.num_steps != self.num_steps:
            warnings.warn(f"policy '{self.name}' lists the steps of a {self.num_steps}-step run; this run has "
                          f"{run.num_steps}: each listed step is mapped to the same fraction of the run", stacklevel=2)
        return forecast_actions(steps, self.computed(run.num_steps).__contains__, self.order)


@hookimpl
def cachekit_policies() -> list[type]:
    return [Schedule]
