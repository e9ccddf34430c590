"""Stored tensors on CPU live in buffers the run recycles; a buffer handed out as an output is never overwritten."""

import torch

import cachekit
from cachekit.demo import demo_call, tiny_latte_pipeline
from cachekit.values import BufferPool


def test_pool_recycles_released_buffers_of_the_same_shape_and_dtype():
    pool = BufferPool()
    a = torch.arange(6.0).reshape(2, 3)
    (kept,) = pool.keep((a[:, :3],))
    assert kept.data_ptr() != a.data_ptr() and torch.equal(kept, a) and kept.is_contiguous()
    pool.release((kept,))
    assert pool.free_bytes == kept.nbytes
    (other,) = pool.keep((torch.zeros(3, 2),))  # another shape: a new buffer
    assert other.data_ptr() != kept.data_ptr() and pool.free_bytes == kept.nbytes
    (again,) = pool.keep((a + 1,))
    assert again is kept and torch.equal(again, a + 1) and pool.free_bytes == 0
    (double,) = pool.keep((torch.ones(2, 3, dtype=torch.float64),))  # another dtype: a new buffer
    assert double is not kept


def test_a_lent_buffer_is_let_go_instead_of_recycled():
    pool = BufferPool()
    (kept,) = pool.keep((torch.ones(4),))
    pool.lend((kept,))
    pool.release((kept,))
    assert pool.free_bytes == 0
    (fresh,) = pool.keep((torch.zeros(4),))
    assert fresh is not kept and torch.equal(kept, torch.ones(4))


def test_a_cpu_run_recycles_its_stored_tensors(monkeypatch):
    made, recycled = [0], [0]
    keep = BufferPool.keep

    def counting_keep(self, value):
        free = sum(len(v) for v in self._free.values())
        out = keep(self, value)
        taken = free - sum(len(v) for v in self._free.values())
        recycled[0] += taken
        made[0] += len(value) - taken
        return out

    monkeypatch.setattr(BufferPool, "keep", counting_keep)
    pipe = tiny_latte_pipeline()
    session = cachekit.enable(pipe, "fastercache")
    pipe(**demo_call(pipe, steps=20))
    report = session.report()
    live = report.measured_peak_cache_bytes
    assert recycled[0] > made[0] > 0  # most stores reuse a buffer
    assert report.measured_peak_held_bytes >= live == report.predicted_peak_cache_bytes > 0
    assert report.to_dict()["measured_peak_held_bytes"] == report.measured_peak_held_bytes


def test_outputs_handed_out_from_the_cache_are_never_overwritten():
    """Without CFG a reused denoiser output is returned as it is stored: the scheduler may keep it."""
    pipe = tiny_latte_pipeline()
    cachekit.enable(pipe, {"policy": [{"type": "step_reuse", "interval": 2}]})
    outputs = []
    handle = pipe.transformer.register_forward_hook(lambda module, args, out: outputs.append((out[0], out[0].clone())))
    try:
        pipe(**demo_call(pipe, steps=10, guidance_scale=1.0))
    finally:
        handle.remove()
    reused = [k for k in range(1, len(outputs)) if torch.equal(outputs[k][1], outputs[k - 1][1])]
    assert reused  # these steps returned the stored output of the step before
    assert all(torch.equal(out, copy) for out, copy in outputs)  # the buffers were not recycled under them
