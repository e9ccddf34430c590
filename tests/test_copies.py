"""A copy of an enabled pipeline or model (copy.deepcopy, pickle, torch.save) is the plain model:
no hooks, no session, computing with its own weights; the original stays enabled."""

import copy
import io
import pickle

import pytest
import torch
from diffusers.hooks import HookRegistry, ModelHook

import cachekit
from cachekit import EnableError
from cachekit.demo import tiny_latte_pipeline

from .conftest import run

torch.set_num_threads(1)

REUSE = {"policy": [{"type": "reuse", "interval": 2, "sites": {"kinds": ["attn", "mlp"]}, "window": {"start": 0.0, "end": 1.0}}]}


def halve(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)


def assert_plain(model: torch.nn.Module) -> None:
    """Nothing of cachekit is left on ``model`` or its submodules."""
    for name, module in model.named_modules():
        assert "forward" not in module.__dict__ and "__getstate__" not in module.__dict__, name
        assert not hasattr(module, "_diffusers_hook") and not hasattr(module, "_cachekit_session"), name


def test_a_deep_copy_of_an_enabled_pipeline_computes_plainly_with_its_own_weights():
    pipe = tiny_latte_pipeline()
    session = cachekit.enable(pipe, REUSE)
    cached = run(pipe, steps=6)
    twin = copy.deepcopy(pipe)
    assert_plain(twin.transformer)
    halve(twin.transformer)
    reference = tiny_latte_pipeline()
    halve(reference.transformer)
    assert torch.equal(run(twin, steps=6), run(reference, steps=6))  # its own (halved) weights, no caching
    assert torch.equal(run(pipe, steps=6), cached)  # the original is still enabled, unchanged
    assert session.report().counts()["reuse"] > 0
    with pytest.raises(EnableError, match="no cachekit session"):
        cachekit.disable(twin)
    twin_session = cachekit.enable(twin, REUSE)  # a copy is enabled on its own
    run(twin, steps=6)
    assert twin_session is not session and twin_session.report().counts()["reuse"] > 0
    cachekit.disable(pipe)
    assert_plain(pipe.transformer)


def test_pickle_and_torch_save_of_an_enabled_model_hold_the_plain_model():
    pipe = tiny_latte_pipeline()
    cachekit.enable(pipe, REUSE)
    plain = run(tiny_latte_pipeline(), steps=6)
    thawed = pickle.loads(pickle.dumps(pipe))
    assert_plain(thawed.transformer)
    assert torch.equal(run(thawed, steps=6), plain)
    buffer = io.BytesIO()
    torch.save(pipe.transformer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert_plain(loaded)
    thawed.transformer = loaded
    assert torch.equal(run(thawed, steps=6), plain)
    assert hasattr(pipe.transformer, "_cachekit_session")  # the original keeps its session


def test_a_copy_with_another_hook_over_cachekit_is_refused_clearly():
    pipe = tiny_latte_pipeline()
    cachekit.enable(pipe, REUSE)
    HookRegistry.check_if_exists_or_initialize(pipe.transformer).register_hook(ModelHook(), "other")
    with pytest.raises(EnableError, match=r"'other' also wraps its forward; call cachekit.disable"):
        copy.deepcopy(pipe)
    with pytest.raises(EnableError, match="cachekit.disable"):
        pickle.dumps(pipe.transformer)
