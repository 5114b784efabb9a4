"""RHT: the Sylvester matrix, orthogonality, fixed-seed signs, and exact cancellation inside the FP4
Function when quantisation is off (it must then reproduce F.linear, forward and backward)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kpop.quant.hadamard import hadamard_matrix, random_signs, rht, rht_matrix
from kpop.quant.linear import fp4_linear
from kpop.quant.recipe import GemmSpec, Recipe


@pytest.mark.parametrize("d", [1, 2, 16, 128])
def test_hadamard_matches_popcount_formula_and_is_orthogonal(d):
    h = hadamard_matrix(d)
    ref = torch.tensor([[(-1.0) ** bin(i & j).count("1") for j in range(d)] for i in range(d)], dtype=torch.float64)
    assert torch.equal(h, ref)
    m = rht_matrix(d, seed=7, dtype=torch.float64)
    assert torch.allclose(m @ m.t(), torch.eye(d, dtype=torch.float64), atol=1e-14)


def test_signs_are_fixed_by_the_seed():
    s = random_signs(128, 0)
    assert set(s.tolist()) == {-1.0, 1.0}
    assert torch.equal(s, random_signs(128, 0)) and not torch.equal(s, random_signs(128, 1))


def test_rht_acts_on_groups_along_the_last_axis():
    x = torch.randn(3, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    m = (random_signs(16, 5)[:, None] * hadamard_matrix(16)) / 4.0
    expected = torch.cat([x[:, :16] @ m, x[:, 16:] @ m], dim=1)
    assert torch.allclose(rht(x, 16, 5), expected, atol=1e-14)
    with pytest.raises(ValueError):
        rht(torch.zeros(2, 24), 16, 0)


def _rht_only_recipe(d: int) -> Recipe:
    g = GemmSpec(rht=d)  # operands unquantised, RHT on both
    return Recipe(f"rht{d}", g, g, g)


@pytest.mark.parametrize("d", [16, 128])
@pytest.mark.parametrize("in_features", [64, 40])  # 40: the contraction axis is zero-padded
def test_rht_on_both_operands_reproduces_f_linear(d, in_features):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 24, in_features, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(56, in_features, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(56, dtype=torch.float64, generator=gen, requires_grad=True)
    gy = torch.randn(2, 24, 56, dtype=torch.float64, generator=gen)
    y = fp4_linear(x, w, b, _rht_only_recipe(d))
    grads = torch.autograd.grad(y, (x, w, b), gy)
    y_ref = F.linear(x, w, b)
    grads_ref = torch.autograd.grad(y_ref, (x, w, b), gy)
    assert torch.allclose(y, y_ref, rtol=0, atol=1e-12)
    for g, g_ref in zip(grads, grads_ref):
        assert torch.allclose(g, g_ref, rtol=0, atol=1e-11)
    # the transform really ran: with different signs on the two operands it would not cancel
    assert not torch.allclose(rht(x.detach().reshape(-1, in_features)[:, :16], 16, 0), x.detach().reshape(-1, in_features)[:, :16])
