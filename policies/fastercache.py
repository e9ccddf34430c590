"""``fastercache``: dynamic feature reuse (FasterCache, arXiv 2410.19355, Eq. 5).

In its window a site is computed every ``interval`` steps: at the window's first step and every
``interval``-th step after (``phase = p``: at steps s with ``s % interval == p``, the official
scripts' absolute counter). A step in between is rebuilt from the two most recent computed outputs
of its branch, ``F = F_last + w(s) * (F_last - F_prev)``, as the planner finds them. ``w`` is one
value per step, shared by every branch and site: it goes from ``weight_start`` at the window's
first rebuilt step to ``weight`` at its last by ``schedule`` ("linear" rises, "constant" stays at
``weight``), never below ``weight_min``; weights all 0 make a plain copy (reuse). ``batch_guard``
keeps the official scripts' single batched cache: a step computes every branch when the branches
it calls did not last compute at the same step.

``compat = "diffusers"`` reproduces ``diffusers.hooks.FasterCacheConfig``'s attention hook: an
attention output is approximated only at steps whose unconditional branch is skipped (by the rule
``cfg_interval`` / ``cfg_window``, set equal to the ``cfg_cache`` entry's), from the outputs of the
two previous steps whatever they were (approximations are written back), without step scaling.
"""

from __future__ import annotations

from typing import Sequence

import attrs

from cachekit import fields
from cachekit.errors import FieldError
from cachekit.policy import Action, Policy, RunInfo, Window
from cachekit.registry import hookimpl, registry
from cachekit.sites import Selector, Site

from ._compat import compat_field, require_timestep_windows
from ._fields import boolean, check_phase, on_phase, optional_phase


def linear(progress: float) -> float:
    return progress


def constant(progress: float) -> float:
    return 1.0


@attrs.frozen(kw_only=True)
class FasterCache(Policy):
    type_name = "fastercache"

    sites: Selector = attrs.field(factory=lambda: Selector(kinds=("attn.spatial", "attn.temporal", "attn.joint")),
                                  converter=fields.structured(Selector, "sites"))
    window: Window = attrs.field(factory=lambda: Window(start=0.3, end=1.0), converter=fields.structured(Window, "window"))
    interval: int = attrs.field(default=2, validator=fields.integer(lo=1))
    phase: int | None = attrs.field(default=None, validator=optional_phase)
    schedule: str = attrs.field(default="linear", validator=fields.string)
    weight: float = attrs.field(default=1.0, validator=fields.number(lo=0.0, hi=4.0))
    weight_start: float = attrs.field(default=0.0, validator=fields.number(lo=0.0, hi=4.0))
    weight_min: float = attrs.field(default=0.0, validator=fields.number(lo=0.0, hi=4.0))
    batch_guard: bool = attrs.field(default=False, validator=boolean)
    compat: str = compat_field()
    cfg_interval: int = attrs.field(default=5, validator=fields.integer(lo=1))
    cfg_window: Window = attrs.field(factory=lambda: Window(start=-1, end=641, unit="timestep"),
                                     converter=fields.structured(Window, "cfg_window"))

    def __attrs_post_init__(self) -> None:
        if self.schedule not in registry().tables["schedule"]:
            raise FieldError("schedule", self.schedule, "one of " + ", ".join(registry().names("schedule")))
        require_timestep_windows(self, "window", "cfg_window")
        check_phase(self)

    def check_config(self, policies: Sequence[Policy]) -> None:
        """In compat mode the uncond rule must be the one the config's compat cfg_cache applies."""
        if self.compat != "diffusers":
            return
        for other in policies:
            if other.type_name == "cfg_cache" and getattr(other, "compat", None) == "diffusers":
                if (other.interval, other.window) != (self.cfg_interval, self.cfg_window):
                    raise FieldError(
                        "cfg_interval/cfg_window", (self.cfg_interval, self.cfg_window),
                        f"the interval and window of cfg_cache entry '{other.name}' ({other.interval}, {other.window})")

    def branches(self, run_branches: Sequence[str]) -> tuple[str, ...]:
        if self.compat == "diffusers":  # diffusers approximates only the cond half, only under CFG
            return ("cond",) if "uncond" in run_branches else ()
        return tuple(run_branches)

    def plan_site(self, site: Site, branch: str, steps: Sequence[int], run: RunInfo) -> dict[int, Action]:
        """Compute or rebuild each step (diffusers compat: explicit sources, rebuilt steps only)."""
        if self.compat == "diffusers":
            rebuilt = self._diffusers_sources(steps, run)
            weights = self._ramp(list(rebuilt))
            return {step: Action.reconstruct("linear", [(prev, site.name, branch), (latest, site.name, branch)],
                                             {"weight": weights[step], "scale": 1.0})
                    for step, (prev, latest) in rebuilt.items()}
        weights = self.weights(site, run)
        actions = {}
        for step in steps:
            if step not in weights:
                actions[step] = Action.compute()
            elif self.weight == self.weight_start == 0:
                actions[step] = Action.reuse(guard=self.batch_guard)
            else:
                actions[step] = Action.rebuild("linear", 2, {"weight": weights[step]}, guard=self.batch_guard)
        return actions

    def weights(self, site: Site, run: RunInfo) -> dict[int, float]:
        """The window's rebuilt steps and their w, one per step whatever the branch or site."""
        window = self.steps(site, run)
        if not window:
            return {}
        return self._ramp([s for s in window if not on_phase(s, window[0], self.interval, self.phase)])

    def _ramp(self, rebuilt: Sequence[int]) -> dict[int, float]:
        """w at each rebuilt step: ``schedule`` from ``weight_start`` at the first to ``weight`` at the last."""
        if not rebuilt:
            return {}
        ramp = registry().get("schedule", self.schedule)
        first, last = rebuilt[0], rebuilt[-1]
        return {s: max(self.weight_min, self.weight_start + (self.weight - self.weight_start)
                       * ramp((s - first) / (last - first) if last > first else 1.0)) for s in rebuilt}

    def _diffusers_sources(self, steps: Sequence[int], run: RunInfo) -> dict[int, tuple[int, int]]:
        """diffusers: approximate where the uncond branch is skipped and the step is not a multiple of
        ``interval``, from the two previous steps' outputs."""
        skipped_uncond = set(self.cfg_window.steps(run.timesteps, run.num_steps))
        return {
            step: (max(step - 2, 0), step - 1)
            for step in steps
            if step > 0 and step in skipped_uncond and step % self.cfg_interval != 0 and step % self.interval != 0
        }



@hookimpl
def cachekit_policies() -> list[type]:
    return [FasterCache]


@hookimpl
def cachekit_schedules() -> dict:
    return {"linear": linear, "constant": constant}
