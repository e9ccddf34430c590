"""``cfg_cache``: CFG-Cache (FasterCache, arXiv 2410.19355, Eqs. 9-11).

In its window both CFG branches run at every ``interval``-th step (from the window's first step;
``phase = p``: at steps s with ``s % interval == p``, the official scripts' absolute counter). At
the steps between, only the conditional branch runs; the unconditional output is rebuilt from it
and the frequency-domain bias between the branches at the latest step that computed both (kernel
``cfg_fft``; the planner finds that step, also before the window). ``weighting = "paper"``: ``w_low = 1 + a_low`` before
``switch`` (a fraction of the run), ``w_high = 1 + a_high`` from it on; ``weighting = "compounding"``
(the official code and diffusers): each skipped step multiplies the bias by ``alpha_low`` /
``alpha_high`` while inside ``low_window`` / ``high_window``, compounding until the next full step.

``compat = "diffusers"`` also takes diffusers' phase: inside the (open, timestep) window the
unconditional branch is skipped at every step whose index is not a multiple of ``interval``.

The branches it rebuilds, each from "cond" (its ``derives_from``), are ``rebuild``: "uncond" by
default. A perturbed guidance pass (LTX-2's "uncond_stg", "uncond_modality") is rebuilt only where
``rebuild`` names it; otherwise it is left to the other policies, which build it from its own outputs.
"""

from __future__ import annotations

from typing import Sequence

import attrs

from cachekit import fields
from cachekit.errors import FieldError, PlanError
from cachekit.policy import Action, NodeKey, Policy, Ref, RunInfo, Window
from cachekit.reconstruct import LAYOUTS
from cachekit.registry import hookimpl
from cachekit.sites import BRANCH_NAME, Selector, Site

from ._compat import compat_field, require_timestep_windows
from ._fields import check_phase, on_phase, optional_phase


def _rebuilt_branches(instance: object, attribute: attrs.Attribute, value: object) -> None:
    allowed = 'a list of branch names other than "cond", such as ["uncond"] or ["uncond", "uncond_stg"]'
    if not isinstance(value, tuple) or not value or "cond" in value or len(set(value)) != len(value) \
            or not all(isinstance(b, str) and BRANCH_NAME.fullmatch(b) for b in value):
        raise FieldError("rebuild", list(value) if isinstance(value, tuple) else value, allowed)


@attrs.frozen(kw_only=True)
class CfgCache(Policy):
    type_name = "cfg_cache"
    default_branches = ("uncond",)

    sites: Selector = attrs.field(factory=lambda: Selector(kinds=("denoiser",)), converter=fields.structured(Selector, "sites"))
    window: Window = attrs.field(factory=lambda: Window(start=0.3, end=1.0), converter=fields.structured(Window, "window"))
    interval: int = attrs.field(default=5, validator=fields.integer(lo=1))
    phase: int | None = attrs.field(default=None, validator=optional_phase)
    weighting: str = attrs.field(default="paper", validator=fields.one_of("paper", "compounding"))
    a_low: float = attrs.field(default=0.2, validator=fields.number(lo=0.0, hi=4.0))
    a_high: float = attrs.field(default=0.2, validator=fields.number(lo=0.0, hi=4.0))
    switch: float = attrs.field(default=0.5, validator=fields.number(lo=0.0, hi=1.0))
    alpha_low: float = attrs.field(default=1.1, validator=fields.number(lo=0.0, hi=4.0))
    alpha_high: float = attrs.field(default=1.1, validator=fields.number(lo=0.0, hi=4.0))
    low_window: Window = attrs.field(factory=lambda: Window(start=99, end=901, unit="timestep"),
                                     converter=fields.structured(Window, "low_window"))
    high_window: Window = attrs.field(factory=lambda: Window(start=-1, end=301, unit="timestep"),
                                      converter=fields.structured(Window, "high_window"))
    radius_divisor: int = attrs.field(default=5, validator=fields.integer(lo=1))
    compat: str = compat_field()
    rebuild: tuple[str, ...] = attrs.field(default=("uncond",), converter=lambda v: tuple(v) if isinstance(v, list) else v,
                                           validator=_rebuilt_branches)

    def __attrs_post_init__(self) -> None:
        require_timestep_windows(self, "window")
        check_phase(self)
        if self.compat == "diffusers" and self.rebuild != ("uncond",):
            raise FieldError("rebuild", list(self.rebuild), '["uncond"] with compat = "diffusers" (diffusers '
                                                            "rebuilds the unconditional branch alone)")

    def branches(self, run_branches: Sequence[str]) -> tuple[str, ...]:
        """The run's branches that ``rebuild`` names."""
        return tuple(b for b in run_branches if b in self.rebuild)

    def derives_from(self, branch: str) -> tuple[str, ...]:
        """Every branch it rebuilds is rebuilt from "cond"."""
        return ("cond",) if branch in self.rebuild else ()

    def check_site(self, site: Site) -> None:
        if any(layout not in LAYOUTS for layout in site.layouts):
            raise PlanError(
                f"policy '{self.name}' rebuilds '{site.name}' in the frequency domain, but its output has no frame "
                f"layout (Site.layout = {site.layout!r}); its adapter must declare one of {', '.join(LAYOUTS)}"
            )

    def plan_site(self, site: Site, branch: str, steps: Sequence[int], run: RunInfo) -> dict[int, Action]:
        """Rebuild uncond at the window's steps between full ones; full steps are left to compute."""
        first = self.steps(site, run)[0]
        params = {"radius_divisor": self.radius_divisor, "layout": site.layout, "exact_bands": self.compat == "diffusers"}
        return {step: Action.reconstruct("cfg_fft", params=params, refs=FULL_AND_NOW)
                for step in steps if not self._full(step, first)}

    def _full(self, step: int, first: int) -> bool:
        if self.compat == "diffusers":  # diffusers counts from the run's first step
            return step == 0 or step % self.interval == 0
        return on_phase(step, first, self.interval, self.phase)

    def bound(self, node: NodeKey, action: Action, run: RunInfo) -> Action:
        """The bias weights, once the planner found the full step the bias comes from."""
        full, step = action.sources[0][0], node[0]
        if self.weighting == "compounding":  # one factor per step since the full one
            low = set(self.low_window.steps(run.timesteps, run.num_steps))
            high = set(self.high_window.steps(run.timesteps, run.num_steps))
            w_low = tuple(self.alpha_low if s in low else 1.0 for s in range(full + 1, step + 1))
            w_high = tuple(self.alpha_high if s in high else 1.0 for s in range(full + 1, step + 1))
        else:
            early = step / run.num_steps < self.switch
            w_low, w_high = (1.0 + self.a_low if early else 1.0), (1.0 if early else 1.0 + self.a_high)
        return attrs.evolve(action, params=tuple(sorted({**dict(action.params), "w_low": w_low, "w_high": w_high}.items())))


#: The rebuilt branch's output at the latest step that computed it, the cond output of that step, and
#: the cond output of this step.
FULL_AND_NOW = (Ref(back=1), Ref("cond", at=0), Ref("cond", back=0))


@hookimpl
def cachekit_policies() -> list[type]:
    return [CfgCache]
