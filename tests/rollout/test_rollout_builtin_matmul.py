"""`kpop.rollout.builtin.matmul`: the row-chunked `bmm` computes `F.linear`; which layers take it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kpop.rollout.builtin import matmul


@pytest.mark.parametrize("rows", [1, 5, 64])
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_equals_a_naive_dot_product_per_output(rows, bias):
    torch.manual_seed(rows)
    w, x = torch.randn(96, 40, dtype=torch.float64), torch.randn(rows, 1, 40, dtype=torch.float64)
    b = torch.randn(96, dtype=torch.float64) if bias else None
    naive = torch.stack([torch.stack([(x[r, 0] * w[o]).sum() for o in range(96)]) for r in range(rows)])[:, None]
    if bias:
        naive = naive + b
    for chunks in (2, 4, 8):
        torch.testing.assert_close(matmul.chunked(x, w, b, chunks), naive)


def test_linear_takes_the_chunked_form_only_for_large_float32_weights(monkeypatch):
    calls = []
    real = matmul.chunked
    monkeypatch.setattr(matmul, "chunked", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    x = torch.randn(3, 512)
    big, small, odd = torch.randn(512, 512), torch.randn(64, 512), torch.randn(513, 512)
    for w in (big, small, odd, big.bfloat16(), big.t()):
        out = matmul.linear(x.to(w.dtype), w)
        torch.testing.assert_close(out, F.linear(x.to(w.dtype), w), rtol=1e-5, atol=1e-4)
    assert calls == [(512, 512)]  # small (64 KiB), odd (513 rows), bf16 and non-contiguous go to F.linear


def test_module_linear_calls_modules_that_are_not_plain_linears():
    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    layer, x = Scaled(8, 4), torch.randn(2, 8)
    torch.testing.assert_close(matmul.module_linear(layer, x), layer(x))
    plain = nn.Linear(8, 4)
    torch.testing.assert_close(matmul.module_linear(plain, x), plain(x))
