"""The blockwise training loss: autograd's gradient bit for bit, without copies of the masked rows."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import sagann
from sagann.engine import loss as loss_mod
from sagann.engine.loss import masked_accuracy, masked_cross_entropy
from sagann.scheduler.host import is_spilled


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), classes=st.integers(1, 9), seed=st.integers(0, 10**6), block=st.sampled_from([8, 100, 1 << 23]))
def test_gradient_equals_autograd_bit_for_bit(n, classes, seed, block):
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n, classes, generator=gen)).requires_grad_()
    y = torch.randint(0, classes, (n,), generator=gen)
    mask = torch.rand(n, generator=gen) < 0.6
    mask[0] = True
    want = F.cross_entropy(logits[mask], y[mask])
    (want_grad,) = torch.autograd.grad(want, logits)
    old = loss_mod.BLOCK_BYTES
    loss_mod.BLOCK_BYTES = block  # blocks of one row up to the whole graph
    try:
        got = masked_cross_entropy(logits, y, mask)
        (got_grad,) = torch.autograd.grad(got, logits)
    finally:
        loss_mod.BLOCK_BYTES = old
    assert torch.equal(got_grad, want_grad)
    assert got.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-7)
    assert masked_accuracy(logits.detach(), y, mask) == pytest.approx(float((logits[mask].argmax(-1) == y[mask]).float().mean()), rel=1e-6)


def test_gradient_goes_under_the_host_budget():
    logits = torch.randn(4000, 8, requires_grad=True)
    y = torch.randint(0, 8, (4000,))
    mask = torch.ones(4000, dtype=torch.bool)
    host = sagann.HostMemory("16KB")
    seen = []
    logits.register_hook(lambda g: seen.append(is_spilled(g)))
    masked_cross_entropy(logits, y, mask, host).backward()
    assert seen == [True], "a 128 KB gradient past a 16 KB budget is spilled, not in RAM"
    assert torch.equal(logits.grad, torch.autograd.grad(F.cross_entropy(logits, y), logits)[0])


def test_an_empty_mask_is_refused_and_has_no_accuracy():
    logits, y, mask = torch.randn(3, 2), torch.tensor([0, 1, 0]), torch.zeros(3, dtype=torch.bool)
    with pytest.raises(ValueError, match="no rows"):
        masked_cross_entropy(logits, y, mask)
    assert masked_accuracy(logits, y, mask) != masked_accuracy(logits, y, mask)  # NaN
