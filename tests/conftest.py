import os
import tempfile
import warnings

import pytest
import torch

from cachekit.demo import demo_call, tiny_latte_pipeline

torch.set_num_threads(1)
# Tests write nothing into the source tree: hypothesis keeps its examples and caches outside it.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "cachekit-hypothesis"))


@pytest.fixture
def latte():
    """A fresh tiny LattePipeline (random weights, seeded)."""
    return tiny_latte_pipeline()


@pytest.fixture(scope="session")
def latte_reference():
    """Uncached final latents of the demo call, by step count."""
    pipe = tiny_latte_pipeline()
    cache = {}

    def get(steps: int = 10) -> torch.Tensor:
        if steps not in cache:
            cache[steps] = pipe(**demo_call(pipe, steps=steps)).frames
        return cache[steps]

    return get


def run(pipe, steps: int = 10, **pipe_kwargs) -> torch.Tensor:
    """The demo call's final latents (cachekit's run warnings silenced); ``pipe_kwargs`` override it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pipe(**{**demo_call(pipe, steps=steps), **pipe_kwargs}).frames
