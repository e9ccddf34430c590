"""``cfg_cache``: CFG-Cache (FasterCache, arXiv 2410.19355, Eqs. 9-11).

At a full step both CFG branches run. For the ``interval - 1`` steps after it only the conditional
branch runs; the unconditional output is rebuilt from it and the frequency-domain bias between the
branches at the full step (kernel ``cfg_fft``). ``weighting = "paper"``: ``w_low = 1 + a_low`` before
``switch`` (a fraction of the run), ``w_high = 1 + a_high`` from it on; ``weighting = "compounding"``
(the official code and diffusers): each skipped step multiplies the bias by ``alpha_low`` /
``alpha_high`` while inside ``low_window`` / ``high_window``, compounding until the next full step.

``compat = "diffusers"`` also takes diffusers' phase: inside the (open, timestep) window the
unconditional branch is skipped at every step whose index is not a multiple of ``interval``.
"""

from __future__ import annotations

from typing import Sequence

import attrs

from cachekit import fields
from cachekit.errors import PlanError
from cachekit.policy import Action, Policy, Window
from cachekit.reconstruct import LAYOUTS
from cachekit.registry import hookimpl
from cachekit.sites import Selector, Site

from ._compat import compat_field, require_timestep_windows


@attrs.frozen(kw_only=True)
class CfgCache(Policy):
    type_name = "cfg_cache"
    default_branches = ("uncond",)

    sites: Selector = attrs.field(factory=lambda: Selector(kinds=("denoiser",)), converter=fields.structured(Selector, "sites"))
    window: Window = attrs.field(factory=lambda: Window(start=0.3, end=1.0), converter=fields.structured(Window, "window"))
    interval: int = attrs.field(default=5, validator=fields.integer(lo=1))
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

    def __attrs_post_init__(self) -> None:
        require_timestep_windows(self, "window")

    def check_site(self, site: Site) -> None:
        if site.layout not in LAYOUTS:
            raise PlanError(
                f"policy '{self.name}' rebuilds '{site.name}' in the frequency domain, but its output has no frame "
                f"layout (Site.layout = {site.layout!r}); its adapter must declare one of {', '.join(LAYOUTS)}"
            )

    def plan_site(self, site: Site, branch: str, steps: Sequence[int], timesteps: Sequence[float] | None) -> dict[int, Action]:
        if self.compat == "diffusers":
            skipped = {s for s in steps if s > 0 and s % self.interval != 0}
        else:
            skipped = {s for i, s in enumerate(steps) if i % self.interval != 0}
        num_steps = len(timesteps) if timesteps is not None else steps[-1] + 1
        low_steps = high_steps = set()
        if self.weighting == "compounding":
            low_steps = set(self.low_window.steps(timesteps, num_steps))
            high_steps = set(self.high_window.steps(timesteps, num_steps))
        actions: dict[int, Action] = {}
        full, w_low, w_high = None, (), ()
        for step in range(steps[0], steps[-1] + 1):
            if step not in skipped:
                full, w_low, w_high = step, (), ()
                continue
            if full is None:
                full = step - 1  # the step before the window computes both branches
            if self.weighting == "compounding":  # the factors of every skipped step since the full one
                w_low += (self.alpha_low if step in low_steps else 1.0,)
                w_high += (self.alpha_high if step in high_steps else 1.0,)
            else:
                early = step / num_steps < self.switch
                w_low, w_high = (1.0 + self.a_low if early else 1.0), (1.0 if early else 1.0 + self.a_high)
            sources = [(full, site.name, "uncond"), (full, site.name, "cond"), (step, site.name, "cond")]
            actions[step] = Action.reconstruct("cfg_fft", sources, {
                "w_low": w_low, "w_high": w_high, "radius_divisor": self.radius_divisor, "layout": site.layout,
                "exact_bands": self.compat == "diffusers"})
        return actions


@hookimpl
def cachekit_policies() -> list[type]:
    return [CfgCache]
