"""The search over static plans: which steps compute the denoiser, the rest forecast.

A plan is the set of computed steps. A step ``j`` that does not compute is forecast with the
``taylor`` kernel of order ``k`` from the ``k + 1`` latest computed steps before it (fewer at the
start), exactly as the ``schedule`` policy plans it. Its error is taken on the recorded uncached
trajectory (teacher-forced): ``gain[j] * rms(forecast - guided[j])``, the step's move of the latents.
A plan's predicted error is the sum over its forecast steps (errors of nearby steps point the same
way, so they add rather than average out). For every number ``m`` of computed steps, a dynamic
program over (latest ``k + 1`` computed steps) finds the plan of least predicted error; gaps are at
most ``max_gap`` steps. Exact for the additive error; the real run then checks it.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import attrs
import torch

from ..reconstruct import taylor

#: Trajectory elements kept per step for the error estimate (a fixed random subset beyond it).
MAX_ELEMENTS = 1 << 16


@attrs.frozen
class Candidate:
    """A static plan: the steps that compute, the forecast order, its predicted error."""

    computed: tuple[int, ...]
    order: int
    error: float
    num_steps: int

    @property
    def fraction(self) -> float:
        """Denoiser calls made over the uncached run's: its share of the FLOPs."""
        return len(self.computed) / self.num_steps


class StepErrors:
    """``error(j, history)``: the gain-weighted RMS error of forecasting step ``j`` from the computed
    steps ``history`` (ascending) of a recorded trajectory ``(num_steps, ...)``."""

    def __init__(self, guided: torch.Tensor, gains: Sequence[float], seed: int = 0) -> None:
        flat = guided.reshape(guided.shape[0], -1).double()
        if flat.shape[1] > MAX_ELEMENTS:
            pick = torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(seed))[:MAX_ELEMENTS]
            flat = flat[:, pick]
        self.values = flat
        self.gains = tuple(float(g) for g in gains)
        self.num_steps = flat.shape[0]
        self.error = functools.lru_cache(maxsize=None)(self._error)

    def _error(self, step: int, history: tuple[int, ...]) -> float:
        forecast = taylor([self.values[s] for s in history], steps=history, at=step)
        return self.gains[step] * float((forecast - self.values[step]).pow(2).mean().sqrt())

    def plan_error(self, computed: Sequence[int], order: int) -> float:
        """The predicted error of the plan computing ``computed``."""
        chosen, total, done = set(computed), 0.0, []
        for step in range(self.num_steps):
            if step in chosen or not done:
                done.append(step)
            else:
                total += self.error(step, tuple(done[-(order + 1):]))
        return total


def best_plans(errors: StepErrors, order: int, max_gap: int = 6) -> dict[int, Candidate]:
    """For every count ``m`` of computed steps, the plan of least predicted error (step 0 always
    computes; at most ``max_gap - 1`` forecast steps in a row)."""
    n = errors.num_steps
    keep = order + 1

    @functools.lru_cache(maxsize=None)
    def gap(history: tuple[int, ...], until: int) -> float:
        return sum(errors.error(j, history) for j in range(history[-1] + 1, until))

    # layer[m]: state (latest computed steps) -> (error, parent state)
    layers: list[dict[tuple[int, ...], tuple[float, tuple[int, ...] | None]]] = [{}, {(0,): (0.0, None)}]
    for m in range(1, n):
        following: dict[tuple[int, ...], tuple[float, tuple[int, ...] | None]] = {}
        for state, (cost, _) in layers[m].items():
            for step in range(state[-1] + 1, min(state[-1] + max_gap, n - 1) + 1):
                new = (state + (step,))[-keep:]
                total = cost + gap(state, step)
                if new not in following or total < following[new][0]:
                    following[new] = (total, state)
        layers.append(following)
    plans: dict[int, Candidate] = {}
    for m in range(1, n + 1):
        ends = [(cost + gap(state, n), state) for state, (cost, _) in layers[m].items() if n - 1 - state[-1] < max_gap]
        if not ends:
            continue
        total, state = min(ends)
        plans[m] = Candidate(_trace(layers, m, state), order, total, n)
    return plans


def _trace(layers: list[dict], m: int, state: tuple[int, ...]) -> tuple[int, ...]:
    """The computed steps of the path ending in ``state`` at layer ``m``."""
    steps = [state[-1]]
    while m > 1:
        state = layers[m][state][1]
        m -= 1
        steps.append(state[-1])
    return tuple(reversed(steps))


def regular_plans(num_steps: int, most: int, order: int) -> list[Candidate]:
    """TaylorSeer-like plans of at most ``most`` computed steps: the first ``warmup`` steps, every
    ``interval``-th step after them (each phase), the last ``tail`` steps (errors not yet set)."""
    found: dict[tuple[int, ...], Candidate] = {}
    for warmup in range(1, 5):
        for tail in range(0, 4):
            for interval in range(2, 7):
                for phase in range(interval):
                    middle = range(warmup + phase, num_steps - tail, interval)
                    computed = tuple(sorted({*range(warmup), *middle, *range(num_steps - tail, num_steps)}))
                    if len(computed) <= most and computed not in found:
                        found[computed] = Candidate(computed, order, math.nan, num_steps)
    return list(found.values())
