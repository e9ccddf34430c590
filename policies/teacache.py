"""``teacache``: TeaCache (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video
Diffusion Model", arXiv 2411.19108; official code ali-vilab/TeaCache): skip the block stack while the
accumulated, polynomial-rescaled relative L1 change of the first block's timestep-modulated input
stays under a threshold, and add back the stack's residual of the last computed step.

The rule, as the official per-model patches apply it: at each step after the warm-up,
``accumulated += poly(|m_s - m_{s-1}| / |m_{s-1}|)`` (``|a|`` the mean absolute value, ``m`` the
modulated input of the previous step whether it was computed or not, ``poly`` the polynomial with
``coefficients``, highest power first as ``numpy.poly1d``); while ``accumulated < rel_l1_thresh`` the
stack is skipped, else it computes and ``accumulated`` restarts at 0. The first ``warmup`` steps
(the patches' first step, or ``ret_steps``) and the last ``final`` steps compute.

The modulated input is model-specific (the official patches compute each model's first-block
modulation by hand). cachekit measures what the stack's first block receives, chosen by
``modulated_input``: ``"hidden_states"`` (default: the plain first-block input, on every model) or
``"temb"`` (the timestep embedding the first block is modulated by: its ``temb`` keyword input, or
its third positional input, diffusers' block convention ``(hidden_states, encoder_hidden_states,
temb, ...)``; on Wan this is the ``e0`` the official Wan patch measures). Coefficients fitted for one
signal do not transfer to the other; :func:`fit_teacache_coefficients` fits them from recorded
changes, and with the default ``[1.0, 0.0]`` the raw relative change is accumulated.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs
import torch

from cachekit import fields
from cachekit.errors import FieldError, PlanError
from cachekit.policy import Action, OnlineContext, OnlinePolicy, RunInfo
from cachekit.registry import hookimpl
from cachekit.sites import STACK, Selector, Site


def _coefficients(value: Any) -> tuple[float, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _check_coefficients(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, tuple) or not value or not all(fields.is_finite_number(c) for c in value):
        raise FieldError(attribute.name, value, "a non-empty list of finite numbers, highest power first")


@attrs.frozen(kw_only=True)
class TeaCache(OnlinePolicy):
    """Skip the block stack while the rescaled relative change of the modulated input accumulates
    under ``rel_l1_thresh``."""

    type_name = "teacache"

    sites: Selector = attrs.field(factory=lambda: Selector(kinds=(STACK,)), converter=fields.structured(Selector, "sites"))
    scope: str = attrs.field(default="call", validator=fields.one_of("branch", "call", "step", name="scope"))
    rel_l1_thresh: float = attrs.field(default=0.1, validator=fields.number(lo=0.0))
    coefficients: tuple[float, ...] = attrs.field(default=(1.0, 0.0), converter=_coefficients, validator=_check_coefficients)
    modulated_input: str = attrs.field(default="hidden_states", validator=fields.one_of("hidden_states", "temb"))
    warmup: int = attrs.field(default=1, validator=fields.integer(lo=1))
    final: int = attrs.field(default=1, validator=fields.integer(lo=0))

    def check_site(self, site: Site) -> None:
        if site.kind != STACK:
            raise PlanError(f"policy '{self.name}' acts on the block stack only, not on {site.name} ({site.kind}); "
                            "select sites = { kinds = [\"stack\"] }")

    def plan_site(self, site: Site, branch: str, steps: Sequence[int], run: RunInfo) -> dict[int, Action]:
        return {step: Action.compute(observe=True) if step < self.warmup or step >= run.num_steps - self.final
                else Action.online() for step in steps}

    def rescale(self, change: float) -> float:
        """The polynomial with ``coefficients`` (highest power first) at ``change`` (Horner)."""
        value = 0.0
        for c in self.coefficients:
            value = value * change + c
        return value

    def decide(self, context: OnlineContext) -> bool:
        state = context.state
        current, previous = self.modulated(context), state.get("modulated")
        state["modulated"] = current
        if previous is None:
            return False
        change = context.signal((current - previous).abs().mean(), previous.abs().mean())
        state["accumulated"] = state.get("accumulated", 0.0) + self.rescale(change)
        return state["accumulated"] < self.rel_l1_thresh

    def observe(self, context: OnlineContext, output: tuple) -> None:
        context.state.update(modulated=self.modulated(context), accumulated=0.0)

    def modulated(self, context: OnlineContext) -> torch.Tensor:
        """The signal's tensor at this call (see ``modulated_input``)."""
        if self.modulated_input == "hidden_states":
            return context.inputs[0] if context.inputs else context.kwargs["hidden_states"]
        if "temb" in context.kwargs:
            return context.kwargs["temb"]
        if len(context.inputs) > 2 and isinstance(context.inputs[2], torch.Tensor):
            return context.inputs[2]
        raise PlanError(f"policy '{self.name}': the first block of the stack receives no 'temb' keyword nor a third "
                        "positional tensor; use modulated_input = \"hidden_states\"")


def fit_teacache_coefficients(input_changes: Sequence[float] | torch.Tensor, output_changes: Sequence[float] | torch.Tensor,
                              degree: int = 4) -> list[float]:
    """The least-squares polynomial of ``degree`` mapping the relative input changes measured at
    consecutive steps of uncached runs to the relative output changes at the same steps, highest
    power first (``numpy.polyfit``'s order, TeaCache's ``coefficients``)."""
    x = torch.as_tensor(input_changes, dtype=torch.float64).flatten()
    y = torch.as_tensor(output_changes, dtype=torch.float64).flatten()
    if x.shape != y.shape:
        raise ValueError(f"input_changes and output_changes differ in length ({x.numel()} vs {y.numel()})")
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
        raise ValueError(f"degree must be an integer >= 0, not {degree!r}")
    if x.numel() <= degree:
        raise ValueError(f"fitting a degree-{degree} polynomial needs more than {degree} points, got {x.numel()}")
    vandermonde = torch.stack([x**p for p in range(degree, -1, -1)], dim=1)
    scale = vandermonde.norm(dim=0).clamp_min(torch.finfo(torch.float64).tiny)  # column scaling, as numpy.polyfit
    solution = torch.linalg.lstsq(vandermonde / scale, y.unsqueeze(1), driver="gelsd").solution.squeeze(1) / scale
    return [float(c) for c in solution]


@hookimpl
def cachekit_policies() -> list[type]:
    return [TeaCache]
