"""oneDNN linears over prepacked weights (kpop.rollout.builtin.onednn): values against a float64
reference, and the prepacked copy following in-place updates and new storage of the parameters,
alone and as the packed whole of several (kpop.rollout.builtin.packed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kpop.rollout.builtin import matmul, onednn
from kpop.rollout.builtin.packed import fused_linear

pytestmark = pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN linear ops")


def _reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    y = x.double() @ w.double().t()
    return (y if b is None else y + b.double()).to(x.dtype)


@pytest.mark.parametrize("rows", [1, 2, 5, 64])
@pytest.mark.parametrize("bias", [False, True])
def test_values_match_a_float64_product(rows, bias):
    torch.manual_seed(rows)
    layer = nn.Linear(96, 40, bias=bias)
    x = torch.randn(rows, 1, 96)
    with torch.inference_mode():
        got = onednn.linear(layer, "w", [layer.weight], layer.weight, layer.bias, x)
    assert got.shape == (rows, 1, 40)
    torch.testing.assert_close(got, _reference(x, layer.weight, layer.bias), rtol=0, atol=1e-5)


def test_bfloat16_values():
    torch.manual_seed(0)
    layer = nn.Linear(128, 64, bias=False).to(torch.bfloat16)
    x = torch.randn(3, 128).to(torch.bfloat16)
    with torch.inference_mode():
        got = onednn.linear(layer, "w", [layer.weight], layer.weight, None, x)
    torch.testing.assert_close(got.float(), _reference(x.float(), layer.weight.float(), None).float(), rtol=0.02, atol=0.05)


def test_an_in_place_update_is_used_at_the_next_call():
    torch.manual_seed(0)
    layer, new = nn.Linear(32, 16, bias=False), nn.Linear(32, 16, bias=False)
    x = torch.randn(4, 32)
    with torch.inference_mode():
        onednn.linear(layer, "w", [layer.weight], layer.weight, None, x)
    with torch.no_grad():
        layer.weight.copy_(new.weight)  # what WeightLoader.commit does
    with torch.inference_mode():
        got = onednn.linear(layer, "w", [layer.weight], layer.weight, None, x)
    torch.testing.assert_close(got, _reference(x, new.weight, None), rtol=0, atol=1e-5)


def test_new_storage_is_used_at_the_next_call():
    torch.manual_seed(0)
    layer = nn.Linear(32, 16, bias=False)
    x = torch.randn(4, 32)
    with torch.inference_mode():
        first = onednn.linear(layer, "w", [layer.weight], layer.weight, None, x)
    replacement = torch.randn(16, 32)
    layer.weight.data = replacement
    with torch.inference_mode():
        got = onednn.linear(layer, "w", [layer.weight], layer.weight, None, x)
    torch.testing.assert_close(got, _reference(x, replacement, None), rtol=0, atol=1e-5)
    assert not torch.allclose(got, first)


def test_fused_projections_follow_updates_of_their_parameters(monkeypatch):
    """q|k|v packed into one tensor, several rows through oneDNN; then each parameter updated in
    place: the packed whole does not change its own version, the parameters' versions do."""
    monkeypatch.setattr(matmul, "MIN_NUMEL", 0)
    calls = []
    packed_linear = onednn.linear
    monkeypatch.setattr(onednn, "linear", lambda *a, **k: calls.append(1) or packed_linear(*a, **k))
    torch.manual_seed(0)
    owner = nn.ModuleList(nn.Linear(32, n, bias=False) for n in (16, 8, 8))
    new = nn.ModuleList(nn.Linear(32, n, bias=False) for n in (16, 8, 8))
    x = torch.randn(6, 1, 32)
    with torch.inference_mode():
        fused_linear(owner, "qkv", list(owner), x)
    with torch.no_grad():
        for mine, theirs in zip(owner, new):
            mine.weight.copy_(theirs.weight)
    with torch.inference_mode():
        got = fused_linear(owner, "qkv", list(owner), x)
    assert len(calls) == 2
    for out, layer in zip(got, new):
        torch.testing.assert_close(out, _reference(x, layer.weight, None), rtol=0, atol=1e-5)


def test_one_float32_row_stays_on_the_blocked_bmm(monkeypatch):
    monkeypatch.setattr(matmul, "MIN_NUMEL", 0)
    calls = []
    monkeypatch.setattr(onednn, "linear", lambda *a, **k: calls.append(1))
    layer = nn.Linear(32, 16, bias=False)
    with torch.inference_mode():
        matmul.module_linear(layer, torch.randn(1, 1, 32))
        assert calls == []
        matmul.module_linear(layer, torch.randn(2, 1, 32))
    assert calls == [1]
