"""``taylorseer``: TaylorSeer (Liu et al., "From Reusing to Forecasting", arXiv 2503.06923;
Shenyi-Z/TaylorSeer; diffusers ``TaylorSeerCacheConfig``): a static plan that computes its sites at
full steps and, between them, forecasts each site's output with a Taylor series in the step index
whose derivatives are finite differences of the latest full steps.

Full steps, as diffusers' ``TaylorSeerCacheHook`` counts them: the first ``warmup`` steps
(``disable_cache_before_step``), every step s with ``(s - warmup - 1) % interval == 0``
(``cache_interval``), and every step from ``end`` on (``disable_cache_after_step``; None: none).
Every other step rebuilds each selected site with the ``taylor`` kernel of order ``order``
(``max_order``) from the ``order + 1`` latest full steps of its branch (fewer, and a lower order,
while fewer have run, as TaylorSeer's recursively updated factors have). ``factors_dtype``
(``taylor_factors_dtype``) rounds the stored factors to that dtype after every update.

Sites: the self-attention sites by default (diffusers hooks attention-like modules); ``lite``
(diffusers' ``use_lite_mode``) forecasts the denoiser's output only: diffusers' lite mode turns every
transformer block into a no-op returning zeros at forecast steps and forecasts ``proj_out``, whose
output the model only reshapes, so the model's output is the forecast; cachekit skips the whole call.

``compat = "diffusers"`` stores the factors in bfloat16 unless ``factors_dtype`` says otherwise
(diffusers' default); the schedule and the forecast are diffusers' in either mode.
"""

from __future__ import annotations

from typing import Callable, Sequence

import attrs

from cachekit import fields
from cachekit.errors import FieldError
from cachekit.policy import Action, Policy, RunInfo
from cachekit.registry import hookimpl
from cachekit.sites import Selector, Site

from ._compat import compat_field
from ._fields import boolean

#: The dtypes the Taylor factors may be stored in (None: the site output's own dtype).
FACTOR_DTYPES = ("bfloat16", "float16", "float32", "float64")
ATTENTION = Selector(kinds=("attn.spatial", "attn.temporal", "attn.joint"))
LITE = Selector(kinds=("denoiser",))


def _optional_step(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is not None:
        fields.integer(lo=1)(instance, attribute, value)


def _optional_dtype(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is not None:
        fields.one_of(*FACTOR_DTYPES)(instance, attribute, value)


@attrs.frozen(kw_only=True)
class TaylorSeer(Policy):
    """Compute the sites at full steps; forecast them from Taylor factors in between."""

    type_name = "taylorseer"

    interval: int = attrs.field(default=5, validator=fields.integer(lo=1))
    order: int = attrs.field(default=1, validator=fields.integer(lo=0, hi=4))
    warmup: int = attrs.field(default=3, validator=fields.integer(lo=0))
    end: int | None = attrs.field(default=None, validator=_optional_step)
    factors_dtype: str | None = attrs.field(default=None, validator=_optional_dtype)
    lite: bool = attrs.field(default=False, validator=boolean)
    compat: str = compat_field()
    sites: Selector = attrs.field(default=ATTENTION, converter=fields.structured(Selector, "sites"))

    def __attrs_post_init__(self) -> None:
        if self.lite and self.sites == ATTENTION:  # lite mode's own sites (diffusers: lite overrides the patterns)
            object.__setattr__(self, "sites", LITE)
        if self.lite and self.sites != LITE:
            raise FieldError("sites", self.sites, "the denoiser only when lite = true (lite mode forecasts the model's "
                             "output, as diffusers' use_lite_mode); drop one of them")

    @property
    def dtype(self) -> str | None:
        """The dtype the factors are stored in: ``factors_dtype``, else bfloat16 under diffusers compat."""
        if self.factors_dtype is None and self.compat == "diffusers":
            return "bfloat16"
        return self.factors_dtype

    def full(self, step: int) -> bool:
        """Whether ``step`` computes (diffusers' ``TaylorSeerCacheHook._measure_should_compute``)."""
        return (step < self.warmup or (step - self.warmup - 1) % self.interval == 0
                or (self.end is not None and step >= self.end))

    def plan_site(self, site: Site, branch: str, steps: Sequence[int], run: RunInfo) -> dict[int, Action]:
        """Compute at full steps (and while nothing is computed yet); forecast from up to ``order + 1``
        full steps in between."""
        return forecast_actions(steps, self.full, self.order, self.dtype)


def forecast_actions(steps: Sequence[int], full: Callable[[int], bool], order: int,
                     dtype: str | None = None) -> dict[int, Action]:
    """Compute at the ``full`` steps (and while nothing is computed yet); in between, rebuild with the
    ``taylor`` kernel of ``order`` from the ``order + 1`` latest computed steps (fewer, and a lower
    order, while fewer have run); order 0 in the output's dtype is a plain reuse."""
    params = {} if dtype is None else {"dtype": dtype}
    actions: dict[int, Action] = {}
    computed = 0
    for step in steps:
        if computed == 0 or full(step):
            actions[step] = Action.compute()
            computed += 1
            continue
        history = min(order + 1, computed)
        if history == 1 and not params:
            actions[step] = Action.reuse()  # the latest output as it is
        else:
            actions[step] = Action.rebuild("taylor", history, params)
    return actions


@hookimpl
def cachekit_policies() -> list[type]:
    return [TaylorSeer]
