"""``fastercache``: dynamic feature reuse (FasterCache, arXiv 2410.19355, Eq. 5).

In its window a site is computed every ``interval`` steps; a step in between is reconstructed from
the two most recent computed outputs, ``F = F_last + w(t) * (F_last - F_prev) * d / spacing``
(d = steps since F_last, spacing = steps between the two), with w rising from 0 at the first
reconstructed step to ``weight`` at the last (``schedule = "linear"``; ``"constant"`` keeps ``weight``).

``compat = "diffusers"`` reproduces ``diffusers.hooks.FasterCacheConfig``'s attention hook: an
attention output is approximated only at steps whose unconditional branch is skipped (by the rule
``cfg_interval`` / ``cfg_window``, set equal to the ``cfg_cache`` entry's), from the outputs of the
two previous steps whatever they were (approximations are written back), without step scaling.
"""

from __future__ import annotations

from typing import Sequence

import attrs

from cachekit import fields
from cachekit.policy import Action, Policy, Window
from cachekit.registry import hookimpl, registry
from cachekit.sites import Selector, Site

from ._compat import compat_field, require_timestep_windows


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
    schedule: str = attrs.field(default="linear", validator=fields.string)
    weight: float = attrs.field(default=1.0, validator=fields.number(lo=0.0, hi=4.0))
    compat: str = compat_field()
    cfg_interval: int = attrs.field(default=5, validator=fields.integer(lo=1))
    cfg_window: Window = attrs.field(factory=lambda: Window(start=-1, end=641, unit="timestep"),
                                     converter=fields.structured(Window, "cfg_window"))

    def __attrs_post_init__(self) -> None:
        if self.schedule not in registry().tables["schedule"]:
            raise fields.FieldError("schedule", self.schedule, "one of " + ", ".join(registry().names("schedule")))
        require_timestep_windows(self, "window", "cfg_window")

    def check_config(self, policies: Sequence[Policy]) -> None:
        """In compat mode the uncond rule must be the one the config's compat cfg_cache applies."""
        if self.compat != "diffusers":
            return
        for other in policies:
            if other.type_name == "cfg_cache" and getattr(other, "compat", None) == "diffusers":
                if (other.interval, other.window) != (self.cfg_interval, self.cfg_window):
                    raise fields.FieldError(
                        "cfg_interval/cfg_window", (self.cfg_interval, self.cfg_window),
                        f"the interval and window of cfg_cache entry '{other.name}' ({other.interval}, {other.window})")

    def branches(self, run_branches: Sequence[str]) -> tuple[str, ...]:
        if self.compat == "diffusers":  # diffusers approximates only the cond half, only under CFG
            return ("cond",) if "uncond" in run_branches else ()
        return tuple(run_branches)

    def plan_site(self, site: Site, branch: str, steps: Sequence[int], timesteps: Sequence[float] | None) -> dict[int, Action]:
        """Compute or reconstruct each step; w rises over the reconstructed steps by ``schedule``."""
        rebuilt = self._diffusers_sources(steps, timesteps) if self.compat == "diffusers" else self._paper_sources(steps)
        weight_at = registry().get("schedule", self.schedule)
        first, last = (min(rebuilt), max(rebuilt)) if rebuilt else (0, 0)
        actions: dict[int, Action] = {} if self.compat == "diffusers" else {s: Action.compute() for s in steps}
        for step, (prev, latest, scale) in rebuilt.items():
            progress = (step - first) / (last - first) if last > first else 1.0
            actions[step] = Action.reconstruct(
                "linear", [(prev, site.name, branch), (latest, site.name, branch)],
                {"weight": self.weight * weight_at(progress), "scale": scale},
            )
        return actions

    def _paper_sources(self, steps: Sequence[int]) -> dict[int, tuple[int, int, float]]:
        """Compute once ``interval`` steps have passed since the last computation (or when fewer than
        two computed outputs exist); in between, extrapolate from the two latest computed steps."""
        computed = [steps[0] - 1] if steps[0] > 0 else []  # the step before the window computes
        rebuilt = {}
        for i, step in enumerate(steps):
            if i == 0 or len(computed) < 2 or step - computed[-1] >= self.interval:
                computed.append(step)
            else:
                prev, latest = computed[-2:]
                rebuilt[step] = (prev, latest, (step - latest) / (latest - prev))
        return rebuilt

    def _diffusers_sources(self, steps: Sequence[int], timesteps: Sequence[float] | None) -> dict[int, tuple[int, int, float]]:
        """diffusers: approximate where the uncond branch is skipped and the step is not a multiple of
        ``interval``, from the two previous steps' outputs, unscaled."""
        skipped_uncond = set(self.cfg_window.steps(timesteps, len(timesteps or ())))
        return {
            step: (max(step - 2, 0), step - 1, 1.0)
            for step in steps
            if step > 0 and step in skipped_uncond and step % self.cfg_interval != 0 and step % self.interval != 0
        }


@hookimpl
def cachekit_policies() -> list[type]:
    return [FasterCache]


@hookimpl
def cachekit_schedules() -> dict:
    return {"linear": linear, "constant": constant}
