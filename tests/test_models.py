"""Every model adapter on a real tiny diffusers pipeline of its family, with CFG and the
``fastercache`` preset, through ``cachekit.testing.check_adapter``; then what only some families
have: Wan 2.2's two experts, HunyuanVideo's guidance-distilled runs."""

import warnings

import pytest
import torch

import cachekit
from cachekit.testing import check_adapter
from tests.pipelines import BUILDERS, model_call
from tests.recording import Recorder, check_cached_values

torch.set_num_threads(1)

STEPS = 12
ADAPTERS = {"allegro": "allegro", "mochi": "mochi", "ltx": "ltx", "hunyuan_video": "hunyuan_video",
            "hunyuan_video15": "hunyuan_video15", "cogvideox15": "cogvideox", "wan22": "wan",
            "skyreels_v2": "skyreels_v2", "chronoedit": "chronoedit", "wan_vace": "vace",
            "sana_video": "sana_video", "kandinsky5": "kandinsky5",
            "easyanimate": "easyanimate", "motif_video": "motif_video", "cosmos": "cosmos"}

#: The families whose pipeline batches the CFG branches along dim 0 (the rest call once per branch).
BATCHED = {"allegro", "mochi", "ltx", "cogvideox15", "sana_video", "easyanimate"}


def call(family, pipe, guidance_scale=5.0, steps=STEPS):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pipe(**model_call(family, pipe, steps, guidance_scale=guidance_scale)).frames


def check_plan_executed(session):
    report = session.report()
    assert report.executed == {node: a.kind for node, a in session.plan.nodes() if a.kind != "skip"}
    return report


@pytest.mark.parametrize("family", list(BUILDERS))
def test_check_adapter_fastercache(family):
    """All-compute bitwise equal to uncached, executed = plan and finite under the preset and under a
    reuse of every site kind (residual blocks with tuple outputs included), the first block entered
    once per planned denoiser branch, ``sigmas=`` / ``timesteps=`` calls, ``disable()`` bitwise."""
    result = check_adapter(BUILDERS[family], lambda pipe, steps: model_call(family, pipe, steps), steps=STEPS)
    assert result.adapter == ADAPTERS[family] and result.branches == ("uncond", "cond")
    assert result.first_block_measured == result.first_block_planned < result.first_block_uncached  # uncond skipped
    assert result.cached_nodes["attn.joint"] > 0 and result.cached_nodes["denoiser"] > 0
    assert {"attn.joint", "mlp", "block"} <= set(result.cached_nodes)
    if family in BATCHED:  # every site computed one branch beside a reused one, each way round, as uncached
        sites = [s.name for s in cachekit.find_adapter(BUILDERS[family]().transformer).sites()[1:]] + ["stack"]
        assert sorted(result.one_branch_sites) == sorted(sites) and "one-branch calls" in result.checked
    else:  # one call per branch: no site call carries two branches
        assert result.one_branch_sites == () and result.notes[0].startswith("one-branch calls: not probed: the split")


def module_state(pipe):
    """Per module of every model the pipeline holds: its instance-level ``forward`` and
    ``__getstate__``, and the names in its diffusers hook registry (None: no registry)."""
    models = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    return {(i, name): (m.__dict__.get("forward"), m.__dict__.get("__getstate__"),
                        tuple(m._diffusers_hook.hooks) if "_diffusers_hook" in m.__dict__ else None)
            for i, model in enumerate(models) for name, m in model.named_modules()}


@pytest.mark.parametrize("family", list(BUILDERS))
def test_disable_restores_every_module(family):
    """After a cached run, ``disable()`` leaves every module as it was before ``enable``: the class's
    own forward, no hooks, and bitwise the output of the call before enabling."""
    pipe = BUILDERS[family]()
    reference = call(family, pipe, steps=6)
    before = module_state(pipe)  # the call's cache_context may leave an empty registry on the transformer
    assert not any(any(state) for state in before.values())
    session = cachekit.enable(pipe, "fastercache")
    call(family, pipe, steps=6)
    assert set(session.report().counts()) - {"compute"}  # something was reused or rebuilt
    assert module_state(pipe) != before
    cachekit.disable(pipe)
    assert module_state(pipe) == before
    assert torch.equal(call(family, pipe, steps=6), reference)


def test_wan22_hooks_both_experts_one_run():
    """The two experts share one plan: the high-noise expert answers the first steps, the low-noise
    one the rest, and the run clock counts both as one run."""
    pipe = BUILDERS["wan22"]()
    session = cachekit.enable(pipe, "fastercache")
    call("wan22", pipe)  # profiles
    seen = {id(pipe.transformer): 0, id(pipe.transformer_2): 0}
    handles = [m.patch_embedding.register_forward_pre_hook(lambda mod, a, key=id(m): seen.__setitem__(key, seen[key] + 1))
               for m in (pipe.transformer, pipe.transformer_2)]
    call("wan22", pipe)
    for handle in handles:
        handle.remove()
    report = check_plan_executed(session)
    assert report.branches == ("uncond", "cond") and session.plan.num_steps == STEPS
    assert seen[id(pipe.transformer)] > 0 and seen[id(pipe.transformer_2)] > 0
    computed = sum(1 for (_, site, _), a in session.plan.nodes() if site == "denoiser" and a.kind == "compute")
    assert sum(seen.values()) == computed
    cachekit.disable(pipe)
    assert not hasattr(pipe.transformer_2.blocks[0], "_diffusers_hook")


def test_hunyuan_video_guidance_distilled_says_cfg_has_nothing_to_do():
    """Without true CFG HunyuanVideo calls its transformer once per step (guidance is an input of
    the model): the run has no uncond branch, CFG-Cache says why it did nothing, attention reuse
    still runs."""
    pipe = BUILDERS["hunyuan_video"]()
    session = cachekit.enable(pipe, "fastercache")
    attention = [s.name for s in session.adapter.sites() if s.kind == "attn.joint"]
    with pytest.warns(UserWarning) as caught, Recorder(session, attention) as recorder:
        pipe(**model_call("hunyuan_video", pipe, STEPS, guidance_scale=1.0))
    messages = [str(w.message) for w in caught]
    assert any("guidance-distilled" in m and "CFG policies have nothing to do" in m for m in messages)
    assert any("policy 'cfg_cache' made no decision" in m and "no uncond branch" in m for m in messages)
    report = check_plan_executed(session)
    assert report.branches == ("cond",)
    assert report.counts()["reconstruct"] > 0 and not any(site == "denoiser" and k != "compute"
                                                          for (_, site, _), k in report.executed.items())
    # each rebuilt attention output: the plan's kernel on the outputs its sources computed
    assert check_cached_values(session, recorder) == report.counts()["reconstruct"]
    cachekit.disable(pipe)


def test_token_and_channels_last_outputs_map_to_the_same_frames():
    """CFG-Cache's FFT sees LTX's packed tokens (BLC, on the call's grid), Kandinsky 5's
    channels-last latents (BFHWC) and one item without a batch axis (CFHW) as the same frames as the
    channels-first video they encode."""
    from cachekit.reconstruct import cfg_fft, from_frames, to_frames

    video = torch.randn(2, 4, 3, 8, 10)  # B, C, F, H, W
    tokens = video.permute(0, 2, 3, 4, 1).flatten(1, 3)  # B, F*H*W, C
    channels_last = video.permute(0, 2, 3, 4, 1)  # B, F, H, W, C
    frames = to_frames(video, "BCFHW")
    assert torch.equal(to_frames(tokens, "BLC", (3, 8, 10)), frames)
    assert torch.equal(to_frames(channels_last, "BFHWC"), frames)
    assert torch.equal(from_frames(frames, "BLC", 2), tokens) and torch.equal(from_frames(frames, "BFHWC", 2), channels_last)
    sources = [torch.randn(2, 4, 3, 8, 10) for _ in range(3)]
    rebuilt = cfg_fft(sources, 1.2, 1.0, layout="BCFHW")
    as_tokens = cfg_fft([s.permute(0, 2, 3, 4, 1).flatten(1, 3) for s in sources], 1.2, 1.0, layout="BLC", grid=(3, 8, 10))
    assert torch.allclose(as_tokens, rebuilt.permute(0, 2, 3, 4, 1).flatten(1, 3), atol=1e-5)
    # one item without a batch axis (Wan Animate 2's per-item lists): the same frames as item 1 of the batch
    assert torch.equal(to_frames(video[1], "CFHW"), frames[3:]) and torch.equal(from_frames(frames[3:], "CFHW", 1), video[1])
    item = cfg_fft([s[1] for s in sources], 1.2, 1.0, layout="CFHW")
    assert torch.allclose(item, rebuilt[1], atol=1e-5)
