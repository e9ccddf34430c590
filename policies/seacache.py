"""``seacache``: SeaCache (Spectral-Evolution-Aware cache, arXiv 2602.18993; diffusers
``SeaCacheConfig``). A step skips the whole block stack while the denoiser's visual input, seen
through the SEA filter, has changed little since the last step that ran it.

The SEA indicator of a latent x (one sample, C channels over F frames of H x W) at noise level
sigma is a Wiener-like filter of x over (F, H, W): per axis, with f the FFT frequencies of that
axis and a clean-signal power prior P(f) = 1 / (|f|^p + 1e-16) (``power_exp`` p), the gain is
``g(f) = (1 - sigma) P / ((1 - sigma)^2 P + sigma^2 + 1e-16)``; the three axes' gains multiply, the
product is divided by its mean (the paper's density normalisation, Eq. 7), and the indicator is
``real(IFFT(FFT(x) * g))``. sigma is clamped to [1e-6, 1 - 1e-6].

Rule, as diffusers' ``SeaCacheSharedState.resolve_gate`` states it, per cache context (one CFG
branch in a split-CFG pipeline): at every step the indicator is built and compared with the
previous step's, ``d = mean over samples of mean|I - I_prev| / (mean|I_prev| + 1e-16)``; the step
computes when it is one of the first ``retention_steps`` or the last ``cache_end_steps``, when
there is no previous indicator, when ``max_consecutive_cached`` steps in a row were skipped (0: no
limit), or when the accumulated ``A + d >= threshold``; a computed step resets A to 0, a skipped one
keeps ``A + d``. The indicator always becomes the previous one. A skipped step adds back the stack's
residual of the last computed step (``residual_order = 0``), or (``residual_order = 1``) extrapolates
it linearly in steps from the two latest computed steps: ``r_b + (r_b - r_a) * (s - b) / (b - a)``
(kernel ``linear_steps``); with one computed step so far it reuses that one.

Where diffusers needs a per-model ``raw_vision_callback`` (it ships Wan text-to-video and Cosmos 3),
this reads the denoiser's first input (the noisy latents) in the layout the model's adapter declares,
so it works on every model with an adapter. sigma comes from the step's timestep: ``t / 1000`` as a
float32, taken to the float32 sigma that flow-matching schedulers (Wan, HunyuanVideo, LTX, Mochi...)
multiplied by 1000 to make that timestep, i.e. the scheduler's own sigma. On a variance-preserving
schedule (CogVideoX, Latte) ``t / 1000`` is only a proxy for the noise level. The whole block stack
is skipped (no block kept computed at its ends), as diffusers does.

``compat = "diffusers"`` is diffusers' SeaCache: one decision per call (``scope = "call"``); the
defaults are its defaults.
"""

from __future__ import annotations

import math
from typing import Sequence

import attrs
import numpy as np
import torch

from cachekit import fields
from cachekit.errors import FieldError, PlanError
from cachekit.policy import Action, OnlineContext, OnlinePolicy, RunInfo
from cachekit.registry import hookimpl
from cachekit.sites import STACK, Selector, Site

from ._compat import compat_field

#: The timestep of sigma = 1 in the diffusers schedulers' convention (``num_train_timesteps``).
TRAIN_TIMESTEPS = 1000


@attrs.frozen(kw_only=True)
class SeaCache(OnlinePolicy):
    """Skip the block stack while the SEA-filtered visual input barely changes."""

    type_name = "seacache"

    sites: Selector = attrs.field(factory=lambda: Selector(kinds=(STACK,)), converter=fields.structured(Selector, "sites"))
    scope: str = attrs.field(default="call", validator=fields.one_of("branch", "call", "step", name="scope"))
    threshold: float = attrs.field(default=0.25, validator=fields.number(lo=0.0))
    residual_order: int = attrs.field(default=1, validator=fields.integer(lo=0, hi=1))
    retention_steps: int = attrs.field(default=1, validator=fields.integer(lo=0))
    cache_end_steps: int = attrs.field(default=1, validator=fields.integer(lo=0))
    max_consecutive_cached: int = attrs.field(default=2, validator=fields.integer(lo=0))
    power_exp: float = attrs.field(default=3.0, validator=fields.number(lo=0.0))
    compat: str = compat_field()

    def __attrs_post_init__(self) -> None:
        if self.power_exp <= 0:
            raise FieldError("power_exp", self.power_exp, "a finite number > 0")
        if self.compat == "diffusers" and self.scope != "call":
            raise FieldError("scope", self.scope, "'call' when compat = 'diffusers' (diffusers' SeaCache decides per call)")

    def stack_bounds(self) -> tuple[int, int]:
        return 0, 0

    def check_site(self, site: Site) -> None:
        if site.kind != STACK:
            raise PlanError(f"policy '{self.name}' acts on the block stack only, not on {site.name} ({site.kind}); "
                            "select sites = { kinds = [\"stack\"] }")

    def plan_site(self, site: Site, branch: str, steps: Sequence[int], run: RunInfo) -> dict[int, Action]:
        skip = Action.online(kernel="linear_steps", history=2) if self.residual_order == 1 else Action.online()
        last = run.num_steps - self.cache_end_steps
        return {step: skip if self.retention_steps <= step < last else Action.compute(observe=True) for step in steps}

    def decide(self, context: OnlineContext) -> bool:
        state = context.state
        indicator = self.indicator(context)
        previous, state["indicator"], state["decided"] = state.get("indicator"), indicator, context.step
        if indicator is None or previous is None or [i.shape for i in indicator] != [i.shape for i in previous] \
                or (self.max_consecutive_cached and state.get("skips", 0) >= self.max_consecutive_cached):
            state["distance"] = 0.0
            return False
        distance = sum(context.signal((now.float() - then.float()).abs().mean(), then.float().abs().mean() + 1e-16)
                       for now, then in zip(indicator, previous)) / len(indicator)
        accumulated = state.get("distance", 0.0) + distance
        skip = math.isfinite(accumulated) and accumulated < self.threshold
        state["distance"] = accumulated if skip else 0.0
        state["skips"] = state.get("skips", 0) + 1 if skip else 0
        return skip

    def observe(self, context: OnlineContext, output: tuple) -> None:
        state = context.state
        if state.get("decided") != context.step:  # a step planned to compute: its indicator is still measured
            state["indicator"], state["distance"] = self.indicator(context), 0.0
        state["skips"] = 0

    def indicator(self, context: OnlineContext) -> list[torch.Tensor] | None:
        """The SEA indicator of each sample of the call's latents at the step's sigma (None: unknown)."""
        latents = context.latents()
        if latents is None or context.timestep is None:
            return None
        sigma = flow_sigma(context.timestep)
        return [sea_filter(sample.movedim(0, -1), sigma, self.power_exp) for sample in latents.unbind(0)]


def flow_sigma(timestep: float, train_timesteps: int = TRAIN_TIMESTEPS) -> float:
    """The float32 sigma a flow-matching scheduler turned into ``timestep`` (``t = sigma * 1000`` in
    float32): of the float32 numbers whose product is ``timestep``, the nearest ``timestep / 1000``
    (where two are, the scheduler's may be the other, one ulp away); that quotient in float32 where
    no float32 sigma gives the timestep."""
    t = np.float32(timestep)
    guess = np.float32(t / np.float32(train_timesteps))
    candidates = [guess]
    for direction in (np.float32(np.inf), np.float32(-np.inf)):
        value = guess
        for _ in range(2):
            value = np.nextafter(value, direction)
            candidates.append(value)
    exact = [c for c in candidates if np.float32(c * np.float32(train_timesteps)) == t]
    best = min(exact, key=lambda c: abs(float(c) - float(timestep) / train_timesteps)) if exact else guess
    return float(best)


def sea_filter(latent: torch.Tensor, sigma: float, power_exp: float) -> torch.Tensor:
    """``latent`` (F, H, W, C) filtered over its first three axes by the SEA gain at ``sigma``."""
    dtype, x = latent.dtype, latent.contiguous().float()
    sigma = min(max(sigma, 1e-6), 1.0 - 1e-6)
    signal, noise = 1.0 - sigma, sigma
    gain = None
    for axis in range(3):
        power = 1.0 / (torch.fft.fftfreq(x.shape[axis], device=x.device, dtype=torch.float32).abs().pow(power_exp) + 1e-16)
        axis_gain = signal * power / (signal**2 * power + noise**2 + 1e-16)
        shape = [1] * x.ndim
        shape[axis] = -1
        gain = axis_gain.reshape(shape) if gain is None else gain * axis_gain.reshape(shape)
    mean = gain.mean()
    if torch.isfinite(mean) and mean > 0:
        gain = gain / mean
    return torch.fft.ifftn(torch.fft.fftn(x, dim=(0, 1, 2)) * gain, dim=(0, 1, 2)).real.to(dtype)


def linear_steps(sources: list[torch.Tensor], steps: tuple[int, ...] = (), at: int = 0) -> torch.Tensor:
    """Linear extrapolation in step distance from the two latest outputs ``[F_a, F_b]`` computed at
    steps ``a < b`` to step ``at``: ``F_b + (F_b - F_a) * ((at - b) / (b - a))``; ``F_b`` when a == b."""
    previous, last = sources[-2:] if len(sources) > 1 else (sources[-1], sources[-1])
    a, b = (steps[-2], steps[-1]) if len(steps) > 1 else (at, at)
    if a == b:
        return last
    return last + (last - previous) * ((at - b) / (b - a))


linear_steps.uses_steps = True  # the runtime passes the sources' steps and the current one


@hookimpl
def cachekit_policies() -> list[type]:
    return [SeaCache]


@hookimpl
def cachekit_kernels() -> dict:
    return {"linear_steps": linear_steps}
