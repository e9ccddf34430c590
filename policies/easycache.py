"""``easycache``: EasyCache (Zhou et al., "Less is Enough: Training-Free Video Diffusion Acceleration
via Runtime-Adaptive Caching", arXiv 2507.02860; official code H-EmbodVis/EasyCache): skip the block
stack while the output change predicted from the input change stays small. No calibration.

The rule, as the official scripts apply it (to the whole model; here to the block stack, whose input
and output are hidden states of one shape), with ``|a|`` the mean absolute value of a tensor:

- at each computed step t after the first, the transformation rate
  ``k = |out_t - out_c| / |in_t - in_c|``, c being the previous computed step;
- at each other step s, the predicted relative output change
  ``k * |in_s - in_{s-1}| / |out_c|`` (the input change since the previous step, computed or not,
  against the output of the last computed step c) is added to an accumulator; the step is skipped
  while the accumulator stays under ``threshold``, else it computes and the accumulator restarts at 0;
- the first ``warmup`` steps (the scripts' ``ret_steps``) and the last ``final`` steps compute; a
  step computes while no rate is known yet.

A skipped step adds the stack's residual (output minus input) of the last computed step to its
input (the official "cache"), or with ``order = 1`` extrapolates it from the last two computed
steps (Taylor order 1). The official scripts measure the conditional branch and let the
unconditional one follow its decision; cachekit decides per denoiser call (``scope = "call"``): one
decision for every branch of a batched call, measured on the whole batch, and one per branch where
the pipeline calls once per branch (each branch measures its own rate).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import attrs

from cachekit import fields
from cachekit.errors import PlanError
from cachekit.policy import Action, OnlineContext, OnlinePolicy, RunInfo
from cachekit.registry import hookimpl
from cachekit.sites import STACK, Selector, Site


@attrs.frozen(kw_only=True)
class EasyCache(OnlinePolicy):
    """Skip the block stack while the accumulated predicted change (transformation rate times the
    relative input change) stays under ``threshold``."""

    type_name = "easycache"

    sites: Selector = attrs.field(factory=lambda: Selector(kinds=(STACK,)), converter=fields.structured(Selector, "sites"))
    scope: str = attrs.field(default="call", validator=fields.one_of("branch", "call", "step", name="scope"))
    threshold: float = attrs.field(default=0.05, validator=fields.number(lo=0.0))
    warmup: int = attrs.field(default=7, validator=fields.integer(lo=1))
    final: int = attrs.field(default=1, validator=fields.integer(lo=0))
    order: int = attrs.field(default=0, validator=fields.integer(lo=0, hi=1))

    def check_site(self, site: Site) -> None:
        if site.kind != STACK:
            raise PlanError(f"policy '{self.name}' acts on the block stack only, not on {site.name} ({site.kind}); "
                            "select sites = { kinds = [\"stack\"] }")

    def plan_site(self, site: Site, branch: str, steps: Sequence[int], run: RunInfo) -> dict[int, Action]:
        skip = Action.online(kernel="taylor", history=2) if self.order else Action.online()
        return {step: Action.compute(observe=True) if step < self.warmup or step >= run.num_steps - self.final else skip
                for step in steps}

    def decide(self, context: OnlineContext) -> bool:
        state = context.state
        current = stack_input(context)
        previous, rate, output = state.get("input"), state.get("rate"), state.get("output")
        state["input"] = current
        if previous is None or rate is None or output is None:
            return False
        change = context.signal((current - previous).abs().mean(), output.abs().mean())
        state["accumulated"] = state.get("accumulated", 0.0) + rate * change
        return state["accumulated"] < self.threshold

    def observe(self, context: OnlineContext, output: tuple) -> None:
        state = context.state
        current, out = stack_input(context), output[0]
        if state.get("output") is not None and state.get("computed_input") is not None:
            rate = context.signal((out - state["output"]).abs().mean(), (current - state["computed_input"]).abs().mean())
            state["rate"] = rate if math.isfinite(rate) else None
        state.update(input=current, computed_input=current, output=out, accumulated=0.0)


def stack_input(context: OnlineContext) -> Any:
    """The hidden states entering the stack (its first tensor input)."""
    return context.inputs[0] if context.inputs else context.kwargs["hidden_states"]


@hookimpl
def cachekit_policies() -> list[type]:
    return [EasyCache]
