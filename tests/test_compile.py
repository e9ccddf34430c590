"""torch.compile with cachekit enabled: the model's own computation is compiled (graphs counted by a
real backend), only the run's bookkeeping runs eager; no recompiles across steps or runs."""

import copy
import warnings

import pytest
import torch

import cachekit
from cachekit.errors import EnableError
from cachekit.testing import GraphCounter
from tests.pipelines import tiny_wan_pipeline, wan_call

STEP_REUSE = {"policy": [{"type": "step_reuse", "interval": 2}]}
FIRST_BLOCK = {"policy": [{"type": "first_block", "threshold": 0.1}]}
CONFIGS = {"step_reuse": STEP_REUSE, "fastercache": "fastercache", "first_block": FIRST_BLOCK}
#: Where no hook lies inside a compiled region, the compiled graphs are the uncached model's: the
#: denoiser's hook is outside the whole model, the block stack's outside each compiled block.
SAME_AS_UNCACHED = {("step_reuse", "whole"), ("step_reuse", "blocks"), ("first_block", "blocks")}


def frames(pipe, steps=6):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pipe(**wan_call(pipe, steps)).frames


def compile_model(pipe, counter, where):
    """``where``: "whole" wraps the transformer (the pipeline then calls the compiled one), "blocks"
    compiles each block in place (regional compilation)."""
    if where == "whole":
        pipe.transformer = torch.compile(pipe.transformer, backend=counter)
    else:
        for block in pipe.transformer.blocks:
            block.compile(backend=counter)


def uncached_graphs(where):
    pipe, counter = tiny_wan_pipeline(), GraphCounter()
    compile_model(pipe, counter, where)
    frames(pipe)
    return counter.nodes


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("order", ["before", "after"])
@pytest.mark.parametrize("where", ["whole", "blocks"])
def test_compiled_cached_runs_compile_the_model_and_equal_eager_cached(config, order, where):
    torch._dynamo.reset()
    pipe, counter = tiny_wan_pipeline(), GraphCounter()
    eager = copy.deepcopy(pipe)
    cachekit.enable(eager, CONFIGS[config])
    expected = frames(eager)
    if order == "before":
        compile_model(pipe, counter, where)
    session = cachekit.enable(pipe, CONFIGS[config])
    if order == "after":
        compile_model(pipe, counter, where)
    assert torch.equal(frames(pipe), expected)
    assert counter.graphs > 0 and counter.recompiles == 0
    graphs = counter.graphs
    for steps in (6, 10):  # later runs, of the same length and longer: nothing compiles again
        frames(pipe, steps)
    assert counter.graphs == graphs and counter.recompiles == 0
    assert session.report().counts().keys() - {"compute"}  # it cached for real
    cachekit.disable(pipe)
    if (config, where) in SAME_AS_UNCACHED:
        torch._dynamo.reset()
        assert counter.nodes == uncached_graphs(where)


def test_whole_model_graph_of_a_denoiser_plan_is_the_uncached_graph():
    torch._dynamo.reset()
    uncached = uncached_graphs("whole")
    torch._dynamo.reset()
    pipe, counter = tiny_wan_pipeline(), GraphCounter()
    cachekit.enable(pipe, STEP_REUSE)
    compile_model(pipe, counter, "whole")
    frames(pipe)
    assert counter.nodes == uncached == [max(uncached)]


def test_attention_sites_split_a_compiled_block_at_each_hooked_attention():
    """A hooked attention is a graph break: a block compiles as the code before, inside and after it,
    once for every block (the blocks share their graphs)."""
    torch._dynamo.reset()
    pipe, counter = tiny_wan_pipeline(), GraphCounter()
    session = cachekit.enable(pipe, "fastercache")
    compile_model(pipe, counter, "blocks")
    frames(pipe)
    hooked = session.hooked_modules()
    assert {name.split(".", 2)[-1] for name in hooked if name.startswith("blocks.")} == {"attn1"}
    assert counter.graphs == 3 and counter.recompiles == 0


def test_inductor_compiles_a_cached_run_close_to_eager_cached():
    torch._dynamo.reset()
    pipe, counter = tiny_wan_pipeline(), GraphCounter(backend=torch._inductor.compile)
    eager = copy.deepcopy(pipe)
    cachekit.enable(eager, STEP_REUSE)
    expected = frames(eager)
    session = cachekit.enable(pipe, STEP_REUSE)
    compile_model(pipe, counter, "whole")
    out = frames(pipe)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    frames(pipe)
    assert counter.graphs == 1 and counter.recompiles == 0
    assert session.report().counts()["reuse"] > 0


def test_fullgraph_on_a_hooked_module_is_refused_in_one_line():
    pipe = tiny_wan_pipeline()
    pipe.transformer = torch.compile(pipe.transformer, fullgraph=True, backend=GraphCounter())
    with pytest.raises(EnableError, match=r"compiled with fullgraph=True.*compile it with fullgraph=False") as info:
        cachekit.enable(pipe, STEP_REUSE)
    assert "\n" not in str(info.value)
    assert not hasattr(pipe.transformer._orig_mod, "_cachekit_session")  # nothing was changed
    cachekit.enable(tiny_wan_pipeline(), STEP_REUSE)


def test_fullgraph_compile_after_enable_says_what_to_do():
    pipe = tiny_wan_pipeline()
    cachekit.enable(pipe, STEP_REUSE)
    pipe.transformer = torch.compile(pipe.transformer, fullgraph=True, backend=GraphCounter())
    with pytest.raises(Exception, match="cannot be compiled with fullgraph=True: compile it with fullgraph=False"):
        frames(pipe)


def test_fullgraph_below_the_hooks_compiles_whole():
    """With a denoiser-only plan the blocks carry no hook: each compiles with fullgraph=True."""
    torch._dynamo.reset()
    pipe, counter = tiny_wan_pipeline(), GraphCounter()
    session = cachekit.enable(pipe, STEP_REUSE)
    assert session.hooked_modules() == ("",)
    for block in pipe.transformer.blocks:
        block.compile(backend=counter, fullgraph=True)
    frames(pipe)
    assert counter.graphs == 1 and counter.recompiles == 0
