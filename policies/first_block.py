"""``first_block``: First-Block Cache (ParaAttention; diffusers ``FirstBlockCacheConfig``) and
cache-dit's DBCache. The first ``first_blocks`` blocks run at every step; their residual (their
output minus the first block's input) is compared with the one measured at the last step that ran
the whole stack: while the relative mean absolute difference stays at or under ``threshold``, the
blocks after them (the block stack, minus the last ``last_blocks``, which run too) are skipped and
their residual from that step is added back.

Rule, as diffusers' ``FBCHeadBlockHook`` states it: compute when
``mean|r - r_prev| / mean|r_prev| > threshold``, ``r_prev`` being the residual of the last fully
computed step (a skipped step leaves it unchanged); the first step computes. DBCache adds
``warmup`` steps that always compute and ``max_skips`` (consecutive skipped steps, 0: no limit).
One decision covers every branch a denoiser call carries (diffusers decides per call; split-CFG
pipelines call once per branch, so each branch decides for itself). ``order`` 1 or 2 forecasts the
skipped residual from the last computed ones with the ``taylor`` kernel instead of reusing the
last (cache-dit's DBCache with its TaylorSeer calibrator).

``compat = "diffusers"`` is diffusers' FirstBlockCache: one first block, none kept last, no warm-up,
no limit on consecutive skips.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs

from cachekit import fields
from cachekit.errors import FieldError
from cachekit.policy import Action, OnlineContext, OnlinePolicy, RunInfo
from cachekit.registry import hookimpl
from cachekit.sites import STACK, Selector, Site

from ._compat import compat_field


@attrs.frozen(kw_only=True)
class FirstBlock(OnlinePolicy):
    """Skip the block stack while the first blocks' residual barely changes."""

    type_name = "first_block"

    sites: Selector = attrs.field(factory=lambda: Selector(kinds=(STACK,)), converter=fields.structured(Selector, "sites"))
    scope: str = attrs.field(default="call", validator=fields.one_of("branch", "call", "step", name="scope"))
    threshold: float = attrs.field(default=0.05, validator=fields.number(lo=0.0))
    first_blocks: int | None = attrs.field(default=None, validator=attrs.validators.optional(fields.integer(lo=1)))
    last_blocks: int = attrs.field(default=0, validator=fields.integer(lo=0))
    warmup: int = attrs.field(default=0, validator=fields.integer(lo=0))
    max_skips: int = attrs.field(default=0, validator=fields.integer(lo=0))
    order: int = attrs.field(default=0, validator=fields.integer(lo=0, hi=2))
    compat: str = compat_field()

    def __attrs_post_init__(self) -> None:
        if self.compat == "diffusers":
            if self.first_blocks not in (None, 1):
                raise FieldError("first_blocks", self.first_blocks, "1 (or unset) when compat = 'diffusers' (diffusers' FirstBlockCache)")
            for name, value in (("last_blocks", 0), ("warmup", 0), ("max_skips", 0), ("order", 0), ("scope", "call")):
                if getattr(self, name) != value:
                    raise FieldError(name, getattr(self, name), f"{value!r} when compat = 'diffusers' (diffusers' FirstBlockCache)")

    def stack_bounds(self) -> tuple[int | None, int]:
        return self.first_blocks, self.last_blocks

    def check_site(self, site: Site) -> None:
        if site.kind != STACK:
            from cachekit.errors import PlanError

            raise PlanError(f"policy '{self.name}' acts on the block stack only, not on {site.name} ({site.kind}); "
                            "select sites = { kinds = [\"stack\"] }")

    def plan_site(self, site: Site, branch: str, steps: Sequence[int], run: RunInfo) -> dict[int, Action]:
        skip = Action.online(kernel="taylor", history=self.order + 1) if self.order else Action.online()
        return {step: Action.compute(observe=True) if i < self.warmup else skip for i, step in enumerate(steps)}

    def decide(self, context: OnlineContext) -> bool:
        state = context.state
        previous = state.get("residual")
        if previous is None:
            return False
        change = context.signal((head_residual(context) - previous).abs().mean(), previous.abs().mean())
        reuse = change <= self.threshold and (not self.max_skips or state.get("skips", 0) < self.max_skips)
        state["skips"] = state.get("skips", 0) + 1 if reuse else 0
        return reuse

    def observe(self, context: OnlineContext, output: tuple) -> None:
        context.state["residual"] = head_residual(context)
        context.state["skips"] = 0


def head_residual(context: OnlineContext) -> Any:
    """The residual of the blocks run right before the stack: the last one's hidden-states output
    minus the first one's input."""
    return context.head_outputs[0] - context.head_inputs[0]


@hookimpl
def cachekit_policies() -> list[type]:
    return [FirstBlock]
