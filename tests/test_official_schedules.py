"""Each ``fastercache/<model>`` preset plans exactly the official script's schedule.

The rules below are written from the table of REFERENCE.md section 1 and the official scripts'
CFG factors, independently of the policy code: which steps compute attention, which are rebuilt
from which two computed steps with which coefficient, the uncond rule with its absolute counter,
the single batched cache's guard, and the compounding CFG factors with their windows. At the
official step count the thresholds are the table's; at another step count each threshold keeps
its fraction of the run (``s / n >= t / N``) and counter phases stay absolute.
"""

from types import SimpleNamespace
from typing import Callable, NamedTuple

import pytest

import cachekit
from cachekit import build_plan
from cachekit.adapters.latte import LatteAdapter

SITES = LatteAdapter(SimpleNamespace(transformer_blocks=[None])).sites()
ATTENTION = ("blocks.0.attn.spatial", "blocks.0.attn.temporal")
BRANCHES = ("uncond", "cond")


class Official(NamedTuple):
    steps: int                       # the official step count N
    other: int                       # another step count the preset must scale to
    attention_rebuilt: Callable      # (s, at) -> bool; at(t) is "s >= t" scaled to the run
    weight: Callable                 # (s, n) -> w on (F_last - F_prev) at the official count
    ramp: tuple | None               # (w at first rebuilt, w at last, floor): how w scales
    uncond_rebuilt: Callable         # (s, at, below) -> bool; below(t) is "s < t" scaled
    low: Callable                    # (s, at, below) -> bool: the low band's factor applies
    high: Callable
    alphas: tuple[float, float]      # (low, high) factors per step
    guard: bool                      # one batched attention cache
    copy: bool = False               # attention rebuilt as a plain copy


OFFICIAL = {
    # c = s + 1. Attention: c >= 16 and c even; w 0.5. Uncond: c >= 18 and c % 5 != 0.
    # low *= 1.1 while c < 45, elif c > 35: high *= 1.1.
    "latte": Official(50, 30, lambda s, at: at(15) and (s + 1) % 2 == 0, lambda s, n: 0.5, None,
                      lambda s, at, below: at(17) and (s + 1) % 5 != 0,
                      lambda s, at, below: below(44), lambda s, at, below: not below(44), (1.1, 1.1), True),
    # c = s + 1. Attention: c >= 18 and c % 3 != 0; w 0.3. Uncond: c >= 18 and c % 5 != 0.
    # low *= 1.1 if c <= 40; high *= 1.1 if c >= 30.
    "cogvideox": Official(50, 40, lambda s, at: at(17) and (s + 1) % 3 != 0, lambda s, n: 0.3, None,
                          lambda s, at, below: at(17) and (s + 1) % 5 != 0,
                          lambda s, at, below: below(40), lambda s, at, below: at(29), (1.1, 1.1), True),
    # c = s + 1. Attention: c > 7 and c even; w (c - 7) / 20 * 0.9. Uncond: c > 11 and c % 5 != 0.
    # high *= 1.15 if c >= 20; low *= 1.15 if c <= 25.
    "open-sora": Official(30, 60, lambda s, at: at(7) and (s + 1) % 2 == 0, lambda s, n: (s + 1 - 7) / 20 * 0.9,
                          (0.045, 1.035, 0.0), lambda s, at, below: at(11) and (s + 1) % 5 != 0,
                          lambda s, at, below: below(25), lambda s, at, below: at(19), (1.15, 1.15), False),
    # c = s + 1. Attention: c >= 45 and c % 3 != 0; w 0.3. Uncond: c >= 40 and c % 6 != 0.
    # low *= 1.1 while c <= 130, elif c >= 100: high *= 1.2.
    "open-sora-plan": Official(150, 100, lambda s, at: at(44) and (s + 1) % 3 != 0, lambda s, n: 0.3, None,
                               lambda s, at, below: at(39) and (s + 1) % 6 != 0,
                               lambda s, at, below: below(130), lambda s, at, below: not below(130), (1.1, 1.2), True),
    # c = s + 1. Attention: c > 30 and c even, a plain copy. Uncond: c > 30 and c % 5 != 0.
    # low *= 1.05 if c < 80; high *= 1.1 if c > 60.
    "vchitect": Official(100, 50, lambda s, at: at(30) and (s + 1) % 2 == 0, lambda s, n: 0.0, None,
                         lambda s, at, below: at(30) and (s + 1) % 5 != 0,
                         lambda s, at, below: below(79), lambda s, at, below: at(60), (1.05, 1.1), False, copy=True),
    # c = s (0-based). Attention: c >= 20 and c even; w max(0.5, 1 - (63 - c) / 63).
    # Uncond: c >= 22 and c % 5 != 0 and c != 63. high *= 1.25 if c >= 30; low *= 1.15 if c <= 50.
    "mochi": Official(64, 48, lambda s, at: at(20) and s % 2 == 0, lambda s, n: max(0.5, 1 - (63 - s) / 63),
                      (20 / 63, 62 / 63, 0.5), lambda s, at, below: at(22) and s % 5 != 0 and below(63),
                      lambda s, at, below: below(51), lambda s, at, below: at(30), (1.15, 1.25), False),
}


def expected_schedule(rule: Official, n: int):
    """The official schedule of an ``n``-step run, per branch (the official code's batched slots
    mixed up; here each branch reads its own outputs, see docs/fidelity.md)."""
    def at(s):
        return lambda t: s * rule.steps >= t * n

    def below(s):
        return lambda t: s * rule.steps < t * n

    uncond, full = {}, None
    for s in range(n):
        if not rule.uncond_rebuilt(s, at(s), below(s)):
            full = s
            continue
        factors = [(rule.alphas[0] if rule.low(k, at(k), below(k)) else 1.0,
                    rule.alphas[1] if rule.high(k, at(k), below(k)) else 1.0) for k in range(full + 1, s + 1)]
        uncond[s] = (full, tuple(f[0] for f in factors), tuple(f[1] for f in factors))

    rebuilt = [s for s in range(n) if rule.attention_rebuilt(s, at(s))]
    if n == rule.steps or rule.ramp is None:
        weight = {s: rule.weight(s, n) for s in rebuilt}
    else:  # the official ramp, stretched over this run's rebuilt steps
        first, last, floor = rule.ramp
        weight = {s: max(floor, first + (last - first) * (s - rebuilt[0]) / (rebuilt[-1] - rebuilt[0])) for s in rebuilt}

    attention, computed = {}, {b: [] for b in BRANCHES}
    for s in range(n):
        called = ["cond"] if s in uncond else list(BRANCHES)
        rebuild = s in weight
        if rule.guard and len({computed[b][-1] if computed[b] else None for b in called}) > 1:
            rebuild = False  # the batched cache holds fewer branches than this step calls
        for b in called:
            if rebuild:
                attention[(s, b)] = ("reuse", computed[b][-1]) if rule.copy else \
                    ("reconstruct", computed[b][-2], computed[b][-1], weight[s])
            else:
                attention[(s, b)] = ("compute",)
        for b in called:
            if attention[(s, b)] == ("compute",):
                computed[b].append(s)
    return uncond, attention


def planned_schedule(plan, n):
    uncond, attention = {}, {}
    for s in range(n):
        action = plan.action((s, "denoiser", "uncond"))
        if action.kind != "compute":
            assert action.kind == "reconstruct" and action.kernel == "cfg_fft"
            params = dict(action.params)
            assert action.sources == ((action.sources[0][0], "denoiser", "uncond"), (action.sources[0][0], "denoiser", "cond"),
                                      (s, "denoiser", "cond"))
            uncond[s] = (action.sources[0][0], params["w_low"], params["w_high"])
        for site in ATTENTION:
            for branch in BRANCHES:
                action = plan.action((s, site, branch))
                if action.kind == "skip":
                    continue
                steps = [src[0] for src in action.sources]
                assert all(src[1:] == (site, branch) for src in action.sources)
                entry = (action.kind, *steps, *([dict(action.params)["weight"]] if action.kind == "reconstruct" else []))
                assert attention.setdefault((s, branch), entry) == entry  # one schedule for every site
    return uncond, attention


def approx(schedule):
    return {k: tuple(pytest.approx(v, abs=1e-12) if isinstance(v, (float, tuple)) else v for v in entry)
            for k, entry in schedule.items()}


@pytest.mark.parametrize("official", [True, False], ids=["official-steps", "other-steps"])
@pytest.mark.parametrize("model", sorted(OFFICIAL))
def test_preset_plans_the_official_schedule(model, official):
    rule = OFFICIAL[model]
    n = rule.steps if official else rule.other
    plan = build_plan(cachekit.load_config(f"fastercache/{model}").policies, SITES, BRANCHES, n)
    uncond, attention = planned_schedule(plan, n)
    want_uncond, want_attention = expected_schedule(rule, n)
    assert set(uncond) == set(want_uncond) and uncond == approx(want_uncond)
    assert set(attention) == set(want_attention) and attention == approx(want_attention)
    assert any(e[0] != "compute" for e in attention.values()) and uncond


def test_the_rules_are_the_table_at_the_official_step_counts():
    """Spot checks straight from the table, so a wrong rule above cannot pass unnoticed."""
    latte_uncond, latte_attention = expected_schedule(OFFICIAL["latte"], 50)
    assert min(latte_uncond) == 17 and 19 not in latte_uncond and 24 not in latte_uncond and 49 not in latte_uncond
    assert latte_attention[(15, "cond")] == ("reconstruct", 13, 14, 0.5)
    assert latte_attention[(19, "uncond")] == latte_attention[(19, "cond")] == ("compute",)  # the batch guard
    assert latte_uncond[18] == (16, (1.1,) * 2, (1.0,) * 2) and latte_uncond[48] == (44, (1.0,) * 4, (1.1,) * 4)
    mochi_uncond, mochi_attention = expected_schedule(OFFICIAL["mochi"], 64)
    assert 63 not in mochi_uncond and 21 not in mochi_uncond and 22 in mochi_uncond
    assert mochi_attention[(20, "cond")] == ("reconstruct", 18, 19, 0.5)
    assert mochi_attention[(62, "cond")][-1] == pytest.approx(62 / 63)
    cog_uncond, cog_attention = expected_schedule(OFFICIAL["cogvideox"], 50)
    assert cog_attention[(17, "cond")] == ("compute",) and cog_attention[(18, "cond")] == ("reconstruct", 16, 17, 0.3)
    assert cog_attention[(19, "cond")] == ("compute",)  # the batch guard at a full step
    assert cog_attention[(21, "cond")] == cog_attention[(22, "cond")] == ("reconstruct", 19, 20, 0.3)  # one coefficient
    open_sora_uncond, open_sora_attention = expected_schedule(OFFICIAL["open-sora"], 30)
    assert open_sora_attention[(7, "cond")][-1] == pytest.approx(0.045)
    assert open_sora_attention[(29, "cond")][-1] == pytest.approx(1.035)
