"""The FasterCache equations on inputs where the answer is known exactly, both CFG layouts, batches."""

import numpy as np
import pytest
import torch

import cachekit
from cachekit import PlanError
from cachekit.reconstruct import cfg_fft, frequency_bands, linear
from tests import toy

STEPS = 20


@pytest.fixture(autouse=True)
def toy_adapters():
    toy.register()
    yield
    cachekit.reload_plugins(keep_code=False)


def cached(model, config, steps=STEPS, batch=1, **kwargs):
    session = cachekit.enable(model, config, num_inference_steps=steps, cfg=True)
    try:
        result = toy.sample(model, steps, toy.latents(batch), **kwargs)
    finally:
        cachekit.disable(model)
    return result, session


def test_linear_kernel_is_exact_on_lines():
    line = [torch.full((2,), 3.0 + 0.5 * s, dtype=torch.float64) for s in range(6)]
    assert torch.equal(linear([line[1], line[3]], weight=1.0, scale=0.5), line[4])
    assert torch.equal(linear([line[2], line[3]], weight=0.0), line[3])


def attention_by_hand(model, steps, rebuilt_weight, computes):
    """The toy's attention output per step, rebuilt by Eq. 5 from the two latest computed outputs
    where ``computes(step)`` is False: F_last + w(step) * (F_last - F_prev)."""
    a, b = model.attn.a.detach(), model.attn.b.detach()
    computed, out = [], []
    for step in range(steps):
        exact = a + toy.timestep(step, 1).view(-1, 1, 1, 1, 1) * b
        if computes(step) or len(computed) < 2:
            computed.append(exact)
            out.append(exact)
        else:
            out.append(computed[-1] + rebuilt_weight(step) * (computed[-1] - computed[-2]))
    return out


def sample_by_hand(model, steps, x, attention, guidance=3.0):
    """toy.sample with the attention output given per step (the same on both branches)."""
    field = model.field.detach()
    for step in range(steps):
        h = torch.tanh(x + attention[step])
        x = x - 0.1 * ((h + field) + guidance * (h - (h + field)))
    return x


def test_fastercache_paper_mode_matches_the_equation_by_hand():
    """Window 0.2 of 20 steps: compute at 4, 6, ..., 18 (and before), rebuild 5, 7, ..., 19 with
    w rising 0 -> 1 from step 5 to step 19, from the two latest computed steps (3, 4 at step 5)."""
    model = toy.ToyDenoiser()
    config = {"policy": [{"type": "fastercache", "sites": {"kinds": ["attn"]}, "interval": 2,
                          "window": {"start": 0.2, "end": 1.0}}]}
    (out, _), session = cached(model, config)
    assert session.report().counts()["reconstruct"] == session.plan.counts()["reconstruct"] == 2 * 8
    attention = attention_by_hand(model, STEPS, lambda s: (s - 5) / 14, lambda s: s < 4 or s % 2 == 0)
    expected = sample_by_hand(model, STEPS, toy.latents(), attention)
    assert (out - expected).abs().max() < 1e-6
    # the same model with w halved (the old 0 -> 0.5 ramp) is not the paper's: the test can fail
    halved = sample_by_hand(model, STEPS, toy.latents(),
                            attention_by_hand(model, STEPS, lambda s: (s - 5) / 28, lambda s: s < 4 or s % 2 == 0))
    assert (out - halved).abs().max() > 1e-4


def test_cfg_cache_is_exact_when_uncond_is_cond_plus_a_fixed_field():
    model = toy.ToyDenoiser()
    reference, _ = toy.sample(model, STEPS, toy.latents())
    config = {"policy": [{"type": "cfg_cache", "a_low": 0.0, "a_high": 0.0, "interval": 4}]}
    (out, _), session = cached(model, config)
    assert session.report().counts()["reconstruct"] == 10  # window steps 6..19, full at 6, 10, 14, 18
    assert (out - reference).abs().max() < 1e-6
    (boosted, _), _ = cached(model, {"policy": [{"type": "cfg_cache", "a_low": 0.2, "a_high": 0.2, "interval": 4}]})
    assert (boosted - reference).abs().max() > 1e-3


def test_cfg_fft_equation_on_known_bands():
    """uncond = IFFT(w_low dLF + LF(c) + w_high dHF + HF(c)): with a pure low-frequency bias the
    high weight has no effect and the low weight scales it exactly."""
    torch.manual_seed(0)
    cond_full, cond_now = torch.randn(2, 3, 2, 10, 10, dtype=torch.float64).unbind(0)
    cond_full, cond_now = cond_full[None], cond_now[None]
    bias = torch.ones(1, 3, 2, 10, 10, dtype=torch.float64)  # only the DC component: inside the disk
    low, high = frequency_bands(bias.permute(0, 2, 1, 3, 4).flatten(0, 1), 5)
    assert high.abs().max() < 1e-9 and low.abs().max() > 1
    rebuilt = cfg_fft([cond_full + bias, cond_full, cond_now], w_low=1.5, w_high=7.0, layout="BCFHW")
    assert (rebuilt - (cond_now + 1.5 * bias)).abs().max() < 1e-9
    compounding = cfg_fft([cond_full + bias, cond_full, cond_now], w_low=(1.1, 1.2), w_high=(3.0,), layout="BCFHW")
    assert (compounding - (cond_now + 1.1 * 1.2 * bias)).abs().max() < 1e-9


FULL = {"policy": [
    {"type": "fastercache", "sites": {"kinds": ["attn"]}, "window": {"start": 0.25, "end": 1.0}},
    {"type": "cfg_cache", "window": {"start": 0.3, "end": 1.0}, "interval": 5},
]}


def test_split_and_batched_layouts_agree():
    (batched, _), b_session = cached(toy.ToyDenoiser(), FULL)
    (split, _), s_session = cached(toy.ToySplitDenoiser(), FULL)
    assert b_session.adapter.cfg_layout == "batched" and s_session.adapter.cfg_layout == "split"
    assert b_session.report().counts() == s_session.report().counts()
    assert b_session.report().counts()["reconstruct"] > 0
    assert (batched - split).abs().max() < 1e-12


def test_split_layout_skips_the_uncond_call():
    model = toy.ToySplitDenoiser()
    session = cachekit.enable(model, {"policy": [FULL["policy"][1]]}, num_inference_steps=STEPS, cfg=True)
    toy.sample(model, STEPS, toy.latents())  # the first run also measures the model once
    calls = []
    model.attn.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    toy.sample(model, STEPS, toy.latents())
    cachekit.disable(model)
    rebuilt = session.plan.counts()["reconstruct"]
    assert rebuilt > 0 and len(calls) == 2 * STEPS - rebuilt


@pytest.mark.parametrize("model_cls", [toy.ToyDenoiser, toy.ToySplitDenoiser])
def test_batch_equals_single_runs(model_cls):
    model = model_cls()
    (both, _), _ = cached(model, FULL, batch=2)
    (first, _), _ = cached(model, FULL, batch=1)
    session = cachekit.enable(model, FULL, num_inference_steps=STEPS, cfg=True)
    second, _ = toy.sample(model, STEPS, toy.latents(2)[1:])
    cachekit.disable(model)
    assert session.report().counts()["reconstruct"] > 0
    assert (both - torch.cat([first, second])).abs().max() <= 1e-5


def test_model_without_frame_layout_is_refused_at_enable():
    class NoLayout(toy.ToyAdapter):
        name = "toy-no-layout"
        model_classes = ("NoLayoutDenoiser",)

        def sites(self):
            return [cachekit.Site("denoiser", "denoiser", ""), *super().sites()[1:]]

    class NoLayoutDenoiser(toy.ToyDenoiser):
        """The toy model under an adapter that declares no frame layout."""

    cachekit.register_adapter(NoLayout)
    model = NoLayoutDenoiser()
    with pytest.raises(PlanError, match=r"policy 'cfg_cache' rebuilds 'denoiser' in the frequency domain, but its output has no frame layout"):
        cachekit.enable(model, "cfg_cache", num_inference_steps=10, cfg=True)
    assert not hasattr(model, "_cachekit_session")
    cachekit.enable(model, {"policy": [{"type": "fastercache"}]}, num_inference_steps=10, cfg=True)  # no layout needed
    cachekit.disable(model)


def test_bad_policy_input():
    with pytest.raises(cachekit.ConfigError, match="field 'interval': got 0, expected an integer >= 1"):
        cachekit.load_config({"policy": [{"type": "fastercache", "interval": 0}]})
    with pytest.raises(cachekit.ConfigError, match="field 'schedule': got 'cubic', expected one of constant, linear"):
        cachekit.load_config({"policy": [{"type": "fastercache", "schedule": "cubic"}]})
    with pytest.raises(cachekit.ConfigError, match="field 'window.unit': got 'fraction', expected 'timestep' when compat = 'diffusers'"):
        cachekit.load_config({"policy": [{"type": "pab", "compat": "diffusers"}]})
    model = toy.ToyDenoiser()
    with pytest.raises(PlanError, match=r"window \[10, 30\) lies outside the 20-step run"):
        cachekit.enable(model, {"policy": [{"type": "cfg_cache", "window": {"start": 10, "end": 30, "unit": "step"}}]},
                        num_inference_steps=20, cfg=True)
    assert not hasattr(model, "_cachekit_session")


def test_split_layout_must_call_the_read_branch_first():
    class UncondFirst(toy.ToySplitAdapter):
        name = "toy-uncond-first"
        model_classes = ("UncondFirstDenoiser",)
        call_order = ("uncond", "cond")

    class UncondFirstDenoiser(toy.ToySplitDenoiser):
        """The split toy model under an adapter that calls the uncond branch first."""

    cachekit.register_adapter(UncondFirst)
    with pytest.raises(PlanError, match=r"reads \(\d+, 'denoiser', 'cond'\), but the model calls the 'cond' branch after 'uncond'"):
        cachekit.enable(UncondFirstDenoiser(), {"policy": [FULL["policy"][1]]}, num_inference_steps=STEPS, cfg=True)


def test_two_adapters_for_one_class_is_an_error():
    class Rival(toy.ToyAdapter):
        name = "toy-rival"

    cachekit.register_adapter(Rival)
    with pytest.raises(cachekit.AdapterError, match="adapters 'toy', 'toy-rival' all claim ToyDenoiser"):
        cachekit.enable(toy.ToyDenoiser(), "reuse", num_inference_steps=4)


# -- a toy with a known answer: attention quadratic in t, uncond = cond + G0 + t G1 ---------------


def cfg_bias_by_hand(delta: torch.Tensor, w_low: float, w_high: float) -> torch.Tensor:
    """Eqs. 9-11 on the bias alone, in numpy: w_low on the centred disk of radius min(H, W) // 5 of
    each frame's shifted 2-D spectrum, w_high outside it."""
    d = delta.numpy()
    h, w = d.shape[-2:]
    rows, cols = np.ogrid[:h, :w]
    disk = (cols - w // 2) ** 2 + (rows - h // 2) ** 2 <= (min(h, w) // 5) ** 2
    spectrum = np.fft.fftshift(np.fft.fft2(d), axes=(-2, -1)) * np.where(disk, w_low, w_high)
    return torch.from_numpy(np.fft.ifft2(np.fft.ifftshift(spectrum, axes=(-2, -1))).real)


def fastercache_by_hand(model, steps, attention_rebuilt, weight, guard, uncond_full, cfg_weights, guidance=3.0):
    """The toy's sampling loop with FasterCache applied by its equations, per branch: attention
    F_last + w (F_last - F_prev) from that branch's two latest computed outputs where rebuilt (the
    guard computes every called branch when they last computed at different steps); uncond
    rebuilt as cond + IFFT(W * FFT(uncond - cond at the latest full step)) between full steps."""
    a, b, c = (p.detach() for p in (model.attn.a, model.attn.b, model.attn.c))
    g0, g1 = model.field.detach(), model.drift.detach()
    x, computed, full = toy.latents(), {"uncond": [], "cond": []}, None
    for s in range(steps):
        t = 1.0 - 0.04 * s
        called = ("uncond", "cond") if uncond_full(s) else ("cond",)
        rebuild = attention_rebuilt(s)
        if guard and len({computed[br][-1][0] if computed[br] else None for br in called}) > 1:
            rebuild = False
        attention = {}
        for br in called:
            if rebuild and len(computed[br]) >= 2:
                (_, prev), (_, last) = computed[br][-2:]
                attention[br] = last + weight(s) * (last - prev)
            else:
                attention[br] = a + t * b + t * t * c
        for br in called:
            if not (rebuild and len(computed[br]) >= 2):
                computed[br].append((s, attention[br]))
        cond = torch.tanh(x + attention["cond"])
        if "uncond" in called:
            uncond = torch.tanh(x + attention["uncond"]) + g0 + t * g1
            full = (s, uncond - cond)
        else:
            uncond = cond + cfg_bias_by_hand(full[1], *cfg_weights(full[0], s))
        x = x - 0.1 * (uncond + guidance * (cond - uncond))
    return x


def test_paper_mode_on_the_curved_toy_matches_the_equations():
    """The ``fastercache`` preset at 50 steps: attention computed at s < 15 and s = 15, 17, ...,
    rebuilt at 16, 18, ..., 48 with w = (s - 16) / 32 shared by both branches; both branches at
    s < 16 and s = 16, 21, ..., 46, w_low = 1.2 before half the run, w_high = 1.2 from it."""
    model = toy.ToyCurvedDenoiser()
    (out, _), session = cached(model, "fastercache", steps=50)
    assert session.plan.counts()["reconstruct"] > 0
    expected = fastercache_by_hand(
        model, 50, attention_rebuilt=lambda s: s >= 15 and (s - 15) % 2 == 1, weight=lambda s: (s - 16) / 32,
        guard=False, uncond_full=lambda s: s < 16 or (s - 16) % 5 == 0,
        cfg_weights=lambda full, s: (1.2, 1.0) if s < 25 else (1.0, 1.2))
    assert (out - expected).abs().max() < 1e-6
    reference, _ = toy.sample(model, 50, toy.latents())
    assert (out - reference).abs().max() > 1e-3  # the cached run is not the uncached one


def test_official_latte_preset_on_the_curved_toy_matches_the_equations():
    """``fastercache/latte`` at 50 steps, c = s + 1: attention rebuilt at c >= 16, c even, w = 0.5,
    one batched cache; uncond rebuilt at c >= 18, c % 5 != 0, its bias multiplied by 1.1 per step
    since the full one, in the low band while c < 45 and the high band after."""
    model = toy.ToyCurvedDenoiser()
    (out, _), session = cached(model, "fastercache/latte", steps=50)
    assert session.plan.counts()["reconstruct"] > 0

    def cfg_weights(full, s):
        low = [1.1 if k + 1 < 45 else 1.0 for k in range(full + 1, s + 1)]
        high = [1.0 if k + 1 < 45 else 1.1 for k in range(full + 1, s + 1)]
        return float(np.prod(low)), float(np.prod(high))

    expected = fastercache_by_hand(
        model, 50, attention_rebuilt=lambda s: s + 1 >= 16 and (s + 1) % 2 == 0, weight=lambda s: 0.5, guard=True,
        uncond_full=lambda s: not (s + 1 >= 18 and (s + 1) % 5 != 0), cfg_weights=cfg_weights)
    assert (out - expected).abs().max() < 1e-6
    unguarded = fastercache_by_hand(
        model, 50, attention_rebuilt=lambda s: s + 1 >= 16 and (s + 1) % 2 == 0, weight=lambda s: 0.5, guard=False,
        uncond_full=lambda s: not (s + 1 >= 18 and (s + 1) % 5 != 0), cfg_weights=cfg_weights)
    assert (out - unguarded).abs().max() > 1e-4  # the guard matters: the test can fail
