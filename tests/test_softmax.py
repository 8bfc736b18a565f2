"""The blockwise full softmax: the same loss and gradients as `cross_entropy(addmm(...))`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tailor.models import hardware
from tailor.models.sequential import SeqRecommender
from tailor.models.softmax import catalogue_cross_entropy
from tailor.settings import PRESETS, TrainSettings


def problem(rows=230, items=90, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, dim, generator=g)
    items_ = torch.randn(items, dim, generator=g)
    bias = torch.randn(items, generator=g)
    bias[::7] = -torch.inf  # items that may not be chosen (never a target)
    allowed = torch.as_tensor(np.flatnonzero(np.isfinite(bias.numpy())))
    targets = allowed[torch.randint(len(allowed), (rows,), generator=g)]
    return h, items_, bias, targets


def loss_and_grads(loss_fn, h, items, weight=2.5):
    h, items = h.clone().requires_grad_(), items.clone().requires_grad_()
    loss = loss_fn(h, items)
    (weight * loss).backward()  # a weighted term, as the text view's is
    return loss.item(), h.grad, items.grad


def reference(bias, targets):
    return lambda h, items: nn.functional.cross_entropy(torch.addmm(bias, h, items.T), targets)


@pytest.mark.parametrize("block", [1, 64, 100, 230, 1000])
def test_blocks_give_the_whole_softmax_loss_and_gradients(block):
    h, items, bias, targets = problem()
    want = loss_and_grads(reference(bias, targets), h, items)
    got = loss_and_grads(
        lambda h, i: catalogue_cross_entropy(h, i, bias, targets, block=block), h, items
    )
    assert np.isfinite(want[0]) and got[0] == pytest.approx(want[0], rel=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-7)
    # A column that may not be chosen gets no gradient at all.
    assert torch.all(got[2][::7] == 0)


def test_bf16_products_keep_the_loss_and_gradients_to_bf16_precision():
    h, items, bias, targets = problem(rows=500, items=300, dim=32)
    want = loss_and_grads(reference(bias, targets), h, items)
    got = loss_and_grads(
        lambda h, i: catalogue_cross_entropy(h, i, bias, targets, low_precision=True), h, items
    )
    assert got[0] == pytest.approx(want[0], rel=2e-3)
    for a, b in zip(got[1:], want[1:], strict=True):
        assert a.dtype == torch.float32
        assert float((a - b).norm() / b.norm()) < 2e-2  # bf16 keeps 8 bits of mantissa
        assert float((a - b).norm() / b.norm()) > 0  # and really is computed in bf16


def test_a_block_must_hold_a_row():
    h, items, bias, targets = problem()
    with pytest.raises(ValueError, match="at least 1 row"):
        catalogue_cross_entropy(h, items, bias, targets, block=0)


def test_catalogue_precision_auto_follows_the_hardware(monkeypatch):
    text = np.eye(4, 8, dtype=np.float32)
    settings = TrainSettings(dim=8, layers=1, heads=1, device="cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert SeqRecommender(text, settings)._catalogue_bf16 is False  # emulated: fp32
    forced = settings.model_copy(update={"catalogue_precision": "bf16"})
    assert SeqRecommender(text, forced)._catalogue_bf16 is True
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert hardware.native_bf16("cpu") is True
    assert SeqRecommender(text, settings)._catalogue_bf16 is True
    pinned = settings.model_copy(update={"catalogue_precision": "fp32"})
    assert SeqRecommender(text, pinned)._catalogue_bf16 is False
    # The recipe from before stays what it was: fp32 products.
    assert PRESETS["early-stopped"]["train"]["catalogue_precision"] == "fp32"
