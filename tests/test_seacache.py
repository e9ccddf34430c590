"""``seacache``: diffusers' SeaCache bitwise in compat mode on Wan (split CFG), a batched CogVideoX run
that skips, the decision rule on a hand-computed toy, the step-distance kernel, and bad settings."""

import pytest
import torch
from diffusers.hooks import SeaCacheConfig

import cachekit
from cachekit.errors import ConfigError
from cachekit.policy import OnlineContext
from cachekit.policies.seacache import SeaCache, flow_sigma, linear_steps, sea_filter
from tests.pipelines import cogvideox_call, tiny_cogvideox_pipeline, tiny_wan_pipeline, wan_call

torch.set_num_threads(1)


def stack_kinds(session, branch):
    return "".join(kind[0] for step, branches, kind in session.runtime.last_run.history("stack") if branches == (branch,))


@pytest.mark.parametrize("settings", [{}, {"threshold": 1.0}, {"threshold": 1.0, "residual_order": 0},
                                      {"threshold": 2.0, "max_consecutive_cached": 0, "retention_steps": 2}])
def test_compat_equals_diffusers_sea_cache_bitwise(settings):
    pipe = tiny_wan_pipeline()
    pipe.transformer.enable_cache(SeaCacheConfig(**settings))
    expected = pipe(**wan_call(pipe, 10)).frames
    pipe.transformer.disable_cache()
    with cachekit.enabled(pipe, {"policy": [{"type": "seacache", "compat": "diffusers", **settings}]}) as session:
        got = pipe(**wan_call(pipe, 10)).frames
        counts = session.report().counts()
    assert torch.equal(got, expected)
    skipped = counts.get("reuse", 0) + counts.get("reconstruct", 0)
    assert skipped > 0  # steps were really skipped
    kinds = stack_kinds(session, "cond")
    assert kinds[0] == kinds[-1] == "c"  # the first and last steps compute
    if settings.get("threshold") == 1.0:  # the second step skips with the one residual there is
        assert kinds[1] in "rx"


def test_batched_cogvideox_runs_and_skips_with_one_decision_per_call():
    """A skipped step's last block returns the first block's input plus the stack's residual
    (last block's output minus first block's input) extrapolated in steps from the two latest
    computed steps (the latest one alone before there are two)."""
    pipe = tiny_cogvideox_pipeline()
    blocks = pipe.transformer.transformer_blocks
    entry, exit = {}, {}

    def record(into, tensors):
        run = session.runtime.run
        if run is not None and run.present:
            into[run.step] = [t.clone() for t in tensors if torch.is_tensor(t)][:2]  # hidden, encoder states

    with cachekit.enabled(pipe, {"policy": [{"type": "seacache", "threshold": 1.0}]}) as session:
        handles = [blocks[0].register_forward_pre_hook(lambda m, args, kwargs: record(entry, kwargs.values()), with_kwargs=True),
                   blocks[-1].register_forward_hook(lambda m, args, output: record(exit, output))]
        pipe(**cogvideox_call(pipe, 10))
        for handle in handles:
            handle.remove()
        counts = session.report().counts()
    assert counts.get("reconstruct", 0) > 0
    kinds = stack_kinds(session, "cond")
    assert kinds == stack_kinds(session, "uncond")  # one decision for the call
    computed = []
    for step, kind in enumerate(kinds):
        if kind == "c":
            computed.append((step, [o - i for o, i in zip(exit[step], entry[step])]))
            continue
        (a, previous), (b, last) = computed[-2:] if len(computed) > 1 else computed[-1:] * 2
        for k, (p, r) in enumerate(zip(previous, last)):
            residual = r if a == b else r + (r - p) * ((step - b) / (b - a))
            assert torch.equal(exit[step][k], entry[step][k] + residual), (step, k)


class Toy:
    """A block stack's online node outside a pipeline: the latents of each step handed to the policy."""

    def __init__(self, policy, num_steps):
        self.policy, self.num_steps = policy, num_steps
        self.state: dict = {}

    def run(self, values, timestep=500.0):
        plan = self.policy.plan_site(None, "cond", range(self.num_steps), cachekit.policy.RunInfo(self.num_steps))
        kinds, distances = [], []
        for step, value in enumerate(values):
            latents = torch.full((1, 2, 2, 4, 4), value)
            context = OnlineContext(step, timestep, "cond", None, (), {}, self.state, {}, self.num_steps, ("cond",),
                                    call_latents=lambda latents=latents: latents)
            skip = plan[step].kind == "online" and self.policy.decide(context)
            if not skip:
                self.policy.observe(context, ())
            kinds.append("S" if skip else "C")
            distances.append(self.state["distance"])
        return "".join(kinds), distances


def test_decision_rule_on_a_hand_computed_toy():
    # At one sigma the SEA filter is one linear map: on constant latents the indicators' relative L1
    # distance is |v_now - v_before| / |v_before|. Steps 1..: 0.1, 0.0909, 0.25, 0.0667, 0.0625, 0.0588, 0.0556
    policy = SeaCache(threshold=0.15, max_consecutive_cached=2)
    kinds, distances = Toy(policy, 8).run([1.0, 1.1, 1.2, 1.5, 1.6, 1.7, 1.8, 1.9])
    # 0: retained; 1: 0.1 < 0.15 skips; 2: 0.1 + 0.0909 >= 0.15; 3: 0.25; 4: 0.0667 skips; 5: 0.129 skips;
    # 6: two skipped in a row; 7: the last step
    assert kinds == "CSCCSSCC"
    assert distances[1] == pytest.approx(0.1, rel=1e-5) and distances[5] == pytest.approx(0.1 / 1.5 + 0.1 / 1.6, rel=1e-5)
    assert all(d == 0.0 for d, k in zip(distances, kinds) if k == "C")
    # no limit on consecutive skips, no end step kept: the accumulated distance alone decides
    kinds, _ = Toy(SeaCache(threshold=0.15, max_consecutive_cached=0, cache_end_steps=0), 8).run(
        [1.0, 1.1, 1.2, 1.5, 1.6, 1.7, 1.8, 1.9])
    assert kinds == "CSCCSSCS"  # 6: 0.0667 + 0.0625 + 0.0588 >= 0.15; 7: 0.0556 skips


def test_sea_filter_keeps_less_detail_at_high_noise():
    torch.manual_seed(0)
    x = torch.randn(3, 8, 8, 4) + 0.5

    def detail(y):  # the varying part over (F, H, W) against the per-channel mean
        mean = y.mean((0, 1, 2))
        return ((y - mean).abs().mean() / mean.abs().mean()).item()

    noisy, clean = sea_filter(x, 0.99, 3.0), sea_filter(x, 0.01, 3.0)
    assert noisy.shape == clean.shape == x.shape and noisy.dtype == x.dtype
    assert detail(noisy) < 0.1 * detail(clean)
    constant = torch.full((3, 8, 8, 4), 2.0)  # only the zero frequency: scaled by its normalised gain
    assert torch.allclose(sea_filter(constant, 0.5, 3.0), torch.full_like(constant, sea_filter(constant, 0.5, 3.0)[0, 0, 0, 0]))


def test_flow_sigma_recovers_the_schedulers_sigma():
    pipe = tiny_wan_pipeline()
    pipe.scheduler.set_timesteps(30)
    sigmas, timesteps = pipe.scheduler.sigmas[:-1], pipe.scheduler.timesteps
    exact = [flow_sigma(float(t)) == float(s) for t, s in zip(timesteps, sigmas)]
    assert sum(exact) >= len(exact) - 3  # the rest lie one float32 ulp away (two sigmas give that timestep)
    assert all(abs(flow_sigma(float(t)) - float(s)) <= 1e-7 for t, s in zip(timesteps, sigmas))


def test_linear_steps_extrapolates_in_step_distance():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])
    assert torch.equal(linear_steps([a, b], steps=(2, 4), at=5), b + (b - a) * 0.5)
    assert torch.equal(linear_steps([a, b], steps=(2, 4), at=8), torch.tensor([4.0, 8.0]))
    assert torch.equal(linear_steps([b], steps=(4,), at=6), b)  # one output: reused


def test_plan_skips_with_one_residual_then_extrapolates_from_two():
    pipe = tiny_wan_pipeline()
    with cachekit.enabled(pipe, {"policy": [{"type": "seacache", "threshold": 10.0}]}) as session:
        pipe(**wan_call(pipe, 6))
        plan = session.runtime.plan
    actions = [plan.action((step, "stack", "cond")) for step in range(6)]
    assert [a.kind for a in actions] == ["compute", "online", "online", "online", "online", "compute"]
    assert all(a.sources == ((1, "stack", "cond"), (0, "stack", "cond")) and a.kernel == "linear_steps"
               for a in actions[1:5])
    stack = next(s for s in session.planned_sites if s.name == "stack")
    assert stack.head == () and len(stack.span) == len(pipe.transformer.blocks)  # the whole stack


@pytest.mark.parametrize("entry, field", [
    ({"residual_order": 2}, "residual_order"), ({"power_exp": 0}, "power_exp"), ({"threshold": -1}, "threshold"),
    ({"max_consecutive_cached": 1.5}, "max_consecutive_cached"), ({"scope": "branch", "compat": "diffusers"}, "scope"),
])
def test_bad_settings_are_refused(entry, field):
    with pytest.raises(ConfigError, match=field):
        cachekit.load_config({"policy": [{"type": "seacache", **entry}]})


@pytest.mark.parametrize("family", ["ltx", "hunyuan_video", "mochi", "allegro", "chronoedit", "sana_video"])
def test_indicator_reads_the_latents_of_every_layout(family, monkeypatch):
    """No per-model callback: the denoiser's layout (token sequences through the adapter's frame grid,
    frames-first, channels-first) gives the latents, (B, C, F, H, W) holding exactly the values of the
    denoiser call's hidden states, rearranged; and a loose threshold skips."""
    import tests.pipelines as pipelines

    pipe = getattr(pipelines, f"tiny_{family}_pipeline")()
    seen, calls, original = [], [], SeaCache.indicator

    def indicator(self, context):
        value = original(self, context)
        latents, hidden = context.latents(), calls[-1]
        same_values = torch.equal(latents.flatten().sort().values, hidden.flatten().sort().values)
        seen.append((latents.ndim, value is not None, same_values))
        return value

    monkeypatch.setattr(SeaCache, "indicator", indicator)
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    with cachekit.enabled(pipe, [SeaCache(threshold=10.0)]) as session:
        pipe(**pipelines.model_call(family, pipe, 5))
        counts = session.report().counts()
    handle.remove()
    assert seen and all(ndim == 5 and ok and same for ndim, ok, same in seen), seen
    assert counts.get("reconstruct", 0) + counts.get("reuse", 0) > 0
