"""The FLOP counter against hand-computed counts: matmuls, CPU attention, and flex attention at the
density of its block mask (which torch's own counter cannot run eagerly)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from torch.utils.flop_counter import FlopCounterMode

from cachekit.cost import flop_counter
from cachekit.flops import block_density


def _count(fn) -> int:
    with torch.no_grad(), flop_counter() as counter, torch.compiler.set_stance("force_eager"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex attention warns that it is unfused
        fn()
    return counter.get_total_flops()


def test_matmuls_and_attention_are_counted_by_hand():
    linear = torch.nn.Linear(8, 4)
    assert _count(lambda: linear(torch.randn(3, 8))) == 2 * 3 * 8 * 4
    q, k = torch.randn(2, 3, 10, 16), torch.randn(2, 3, 12, 16)
    # Q K^T then softmax V: 2 * (batch * heads) * Lq * Lk * (d + d)
    assert _count(lambda: F.scaled_dot_product_attention(q, k, k)) == 2 * 6 * 10 * 12 * 32


def test_flex_attention_counts_only_the_blocks_its_mask_computes():
    q = torch.randn(1, 2, 384, 16)
    causal = create_block_mask(lambda b, h, qi, ki: qi >= ki, 1, 1, 384, 384, device="cpu")
    dense = 2 * 2 * 384 * 384 * 32
    # 3 x 3 blocks of 128: the causal mask computes the 6 on and below the diagonal
    assert block_density(causal.as_tuple()) == pytest.approx(6 / 9)
    assert _count(lambda: flex_attention(q, q, q, block_mask=causal)) == int(dense * 6 / 9)
    assert _count(lambda: flex_attention(q, q, q)) == dense
    # the output is flex attention's own
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with flop_counter(), torch.compiler.set_stance("force_eager"):
            counted = flex_attention(q, q, q, block_mask=causal)
        assert torch.equal(counted, flex_attention(q, q, q, block_mask=causal))


def test_torchs_counter_still_cannot_run_flex_attention():
    """Why cachekit has a counter of its own: remove it (and this test) once torch's runs flex."""
    q = torch.randn(1, 1, 128, 16)
    # eager, as cachekit counts: compiling flex's wrapper under a dispatch mode would make dynamo skip it for good
    with pytest.raises(TypeError, match="flex_attention"), FlopCounterMode(display=False), warnings.catch_warnings(), \
            torch.compiler.set_stance("force_eager"):
        warnings.simplefilter("ignore")
        flex_attention(q, q, q)


def test_counts_equal_torchs_counter_on_a_real_model():
    from tests.pipelines import tiny_wan_pipeline

    model = tiny_wan_pipeline().transformer
    args = (torch.randn(1, 4, 3, 16, 16), torch.tensor([500]), torch.randn(1, 8, 32))
    with torch.no_grad(), torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH), FlopCounterMode(display=False) as torchs:
        model(*args)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        ours = _count(lambda: model(*args))
    assert ours == torchs.get_total_flops() > 0
