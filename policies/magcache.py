"""``magcache``: MagCache (Ma et al., "MagCache: Fast Video Generation with Magnitude-Aware Cache",
arXiv 2506.09045; official code Zehong-Ma/MagCache; diffusers ``MagCacheConfig``,
``diffusers/hooks/mag_cache.py``). The block stack is skipped at a step, its residual from the last
computed step added back, while the error accumulated since that step stays small. The error is
predicted from per-step magnitude ratios ``gamma_s`` (the mean over tokens of
``||r_s|| / ||r_{s-1}||``, ``r`` the stack's residual, measured once on an uncached run by
``cachekit calibrate``): the ratios are data, so no tensor is read to decide.

Rule, as diffusers' ``MagCacheHeadHook`` states it: steps ``s < int(retention_ratio * n + 0.5)``
compute (``n`` the run's steps); at every later step

    acc_ratio *= gamma_s;  acc_steps += 1;  acc_err += |1 - acc_ratio|
    skip if a residual is cached and acc_err <= threshold and acc_steps <= max_skips (K),
    else reset acc_ratio = 1, acc_steps = 0, acc_err = 0 and compute.

The accumulators are float32, as diffusers' (its ratios are a float32 tensor). Ratios of another
length than the run's are mapped to it with diffusers' ``nearest_interp`` (``round(i * (m - 1) /
(n - 1))`` in float32, half to even). One rule state per branch (diffusers keeps one per cache
context: per branch where the pipeline calls once per branch, per call where a call carries both).

Since the rule reads nothing but the ratios, it is evaluated when the run is planned: the plan
holds the exact compute/reuse pattern (and its predicted speedup), and the run makes no decision
and no host-device sync. Departures from diffusers, all off in ``compat = "diffusers"``:

- ``mag_ratios_uncond``: the unconditional branch's own ratios (``cachekit calibrate`` records one
  list per branch where the pipeline calls once per branch and the lists differ).
- Two experts (Wan 2.2 A14B: ``transformer`` for timesteps ``>= boundary``, ``transformer_2``
  after): ``mag_ratios_2`` (and ``mag_ratios_2_uncond``) are the second expert's ratios, each list
  mapped to the steps its expert denoises. At the second expert's first step the rule starts over:
  it computes (the cached residual is the other expert's) and the accumulators are reset;
  ``retention_ratio`` counts from the start of the run.
- ``first_blocks`` / ``last_blocks`` keep blocks at the ends of the stack computed (DBCache's Fn/Bn).
- Where the model's blocks return several streams (hidden and text states), a skipped stack adds
  each stream's residual; diffusers adds the hidden stream's only and passes the text stream
  through. The models read only the hidden stream after the last block (the text stream is
  dropped, or normalised per token and dropped), so with the whole stack skipped (compat's F0B0)
  both give the same output; adding every stream keeps kept last blocks (``last_blocks``) fed
  with a text stream of the step's scale, as ``first_block`` does.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import attrs
import torch

from cachekit import fields
from cachekit.errors import FieldError, PlanError
from cachekit.policy import Action, Policy, RunInfo
from cachekit.registry import hookimpl
from cachekit.sites import STACK, Selector, Site

from ._compat import compat_field

#: What the ``calibrated`` provenance table may hold: names to plain values.
PROVENANCE_VALUES = (str, int, float, bool)


def nearest(values: Sequence[float], length: int) -> list[float]:
    """``values`` mapped to ``length`` entries by diffusers' nearest rule: entry ``i`` is
    ``values[round(i * (m - 1) / (length - 1))]`` (float32 index arithmetic, half to even); one entry
    is the last value. The values are rounded to float32, as diffusers holds them."""
    source = torch.tensor([float(v) for v in values], dtype=torch.float32)
    if length == len(values):
        return source.tolist()
    if length == 1:
        return source[-1:].tolist()
    scale = (len(values) - 1) / (length - 1)
    index = torch.round(torch.arange(length, dtype=torch.float32) * scale).long()
    return source[index].tolist()


def skip_pattern(ratios: Sequence[float], steps: Sequence[int], retention: int, threshold: float,
                 max_skips: int) -> list[bool]:
    """MagCache's decisions over ``steps`` (ascending run step indices; ``ratios[i]`` is the ratio of
    ``steps[i]``): True where the step reuses. Steps before ``retention`` compute; the first step
    computes (nothing is cached yet)."""
    one = torch.tensor(1.0, dtype=torch.float32)
    ratio, err, count = one, torch.tensor(0.0, dtype=torch.float32), 0
    limit = torch.tensor(_f32(threshold), dtype=torch.float32)
    cached, out = False, []
    for gamma, step in zip(ratios, steps):
        skip = False
        if step >= retention:
            ratio = ratio * torch.tensor(gamma, dtype=torch.float32)
            count += 1
            err = err + (one - ratio).abs()
            if cached and bool(err <= limit) and count <= max_skips:
                skip = True
            else:
                ratio, err, count = one, torch.tensor(0.0, dtype=torch.float32), 0
        cached = cached or not skip
        out.append(skip)
    return out


def _f32(value: float) -> float:
    """``value`` rounded to float32 (beyond its range: infinite), as a float32 tensor holds it."""
    value = float(value) if abs(value) < 1e300 else math.copysign(math.inf, value)
    return torch.tensor(value, dtype=torch.float32).item()


def _ratio_list(name: str, optional: bool) -> Any:
    def convert(value: Any) -> Any:
        if value is None or not isinstance(value, (list, tuple)):
            return value  # the validator names the problem
        return tuple(float(v) if fields.is_finite_number(v) and abs(v) < 1e300 else v for v in value)

    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None and optional:
            return
        allowed = "a non-empty list of finite numbers > 0 (per-step magnitude ratios; `cachekit calibrate` records them)"
        if not isinstance(value, tuple) or not value or not all(isinstance(v, float) and math.isfinite(v) and v > 0
                                                                for v in value):
            raise FieldError(name, value, allowed)

    default = None if optional else ()
    return attrs.field(default=default, converter=convert, validator=check)


def _provenance(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, PROVENANCE_VALUES)
                                              for k, v in value.items()):
        raise FieldError("calibrated", value, "a table of names to strings, numbers or booleans (where the ratios come from)")


def _optional_number(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None:
        fields.require_number(attribute.name, value)


@attrs.frozen(kw_only=True)
class MagCache(Policy):
    """Skip the block stack while the error predicted from the calibrated magnitude ratios is small."""

    type_name = "magcache"

    sites: Selector = attrs.field(factory=lambda: Selector(kinds=(STACK,)), converter=fields.structured(Selector, "sites"))
    mag_ratios: tuple[float, ...] = _ratio_list("mag_ratios", optional=False)
    mag_ratios_uncond: tuple[float, ...] | None = _ratio_list("mag_ratios_uncond", optional=True)
    mag_ratios_2: tuple[float, ...] | None = _ratio_list("mag_ratios_2", optional=True)
    mag_ratios_2_uncond: tuple[float, ...] | None = _ratio_list("mag_ratios_2_uncond", optional=True)
    boundary: float | None = attrs.field(default=None, validator=_optional_number)
    threshold: float = attrs.field(default=0.06, validator=fields.number(lo=0.0))
    max_skips: int = attrs.field(default=3, validator=fields.integer(lo=1))
    retention_ratio: float = attrs.field(default=0.2, validator=fields.number(lo=0.0, hi=1.0))
    first_blocks: int = attrs.field(default=0, validator=fields.integer(lo=0))
    last_blocks: int = attrs.field(default=0, validator=fields.integer(lo=0))
    compat: str = compat_field()
    calibrated: dict | None = attrs.field(default=None, validator=_provenance, hash=False)

    def __attrs_post_init__(self) -> None:
        if (self.boundary is None) != (self.mag_ratios_2 is None):
            raise FieldError("boundary" if self.boundary is None else "mag_ratios_2", None,
                             "set together: the second expert's ratios and the timestep where it takes over")
        if self.mag_ratios_2_uncond is not None and self.mag_ratios_2 is None:
            raise FieldError("mag_ratios_2_uncond", self.mag_ratios_2_uncond, "unset unless mag_ratios_2 is set")
        if self.compat == "diffusers":
            for name, value in (("first_blocks", 0), ("last_blocks", 0), ("mag_ratios_uncond", None),
                                ("mag_ratios_2", None), ("boundary", None)):
                if getattr(self, name) != value:
                    raise FieldError(name, getattr(self, name), f"{value!r} when compat = 'diffusers' (diffusers' MagCache)")

    def stack_bounds(self) -> tuple[int, int]:
        return self.first_blocks, self.last_blocks

    def check_site(self, site: Site) -> None:
        if site.kind != STACK:
            raise PlanError(f"policy '{self.name}' acts on the block stack only, not on {site.name} ({site.kind}); "
                            "select sites = { kinds = [\"stack\"] }")

    def ratios(self, branch: str, expert: int) -> tuple[float, ...]:
        """The calibrated ratios of ``branch`` on ``expert`` (0: the first or only one)."""
        if expert == 0:
            return self.mag_ratios_uncond if branch == "uncond" and self.mag_ratios_uncond else self.mag_ratios
        assert self.mag_ratios_2 is not None
        return self.mag_ratios_2_uncond if branch == "uncond" and self.mag_ratios_2_uncond else self.mag_ratios_2

    def experts(self, run: RunInfo) -> list[int]:
        """Each step's expert: 0, or 1 where the timestep lies below ``boundary``."""
        if self.boundary is None:
            return [0] * run.num_steps
        if run.timesteps is None:
            raise PlanError(f"policy '{self.name}': two-expert ratios (boundary = {self.boundary}) need the run's "
                            "timesteps; run through the pipeline, or pass timesteps= to enable a bare transformer")
        boundary = _f32(self.boundary)  # the pipeline compares a float32 timestep tensor with it
        return [0 if _f32(t) >= boundary else 1 for t in run.timesteps]

    def plan_site(self, site: Site, branch: str, steps: Sequence[int], run: RunInfo) -> dict[int, Action]:
        experts = self.experts(run)
        retention = int(self.retention_ratio * run.num_steps + 0.5)
        actions: dict[int, Action] = {}
        for expert in sorted(set(experts)):
            segment = [s for s in range(run.num_steps) if experts[s] == expert]
            ratios = nearest(self.ratios(branch, expert), len(segment))
            position = {s: i for i, s in enumerate(segment)}
            mine = [s for s in steps if s in position]
            reuse = skip_pattern([ratios[position[s]] for s in mine], mine, retention, self.threshold, self.max_skips)
            actions.update({s: Action.reuse() if r else Action.compute() for s, r in zip(mine, reuse)})
        return actions


@hookimpl
def cachekit_policies() -> list[type]:
    return [MagCache]
