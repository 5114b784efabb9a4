"""The FP4 autograd Function: each recipe's placement (which operand of which GEMM is rounded how),
checked by instrumenting the Function with `trace`, and the numerics of what it traced."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kpop.quant.gemm import trace
from kpop.quant.grids import get_grid
from kpop.quant.hadamard import rht
from kpop.quant.linear import FP4Linear, fp4_linear
from kpop.quant.recipe import make_recipe
from kpop.quant.scaling import fake_quantize, quantize

T, IN, OUT = 48, 64, 32

# (gemm, operand) → (grid, rounding, block, scale kind, RHT size): the recipes as specified.
U = ("uniform", "rtn", (1, 16), "e4m3", 16)
U_SR = ("uniform", "sr", (1, 16), "e4m3", 16)
EXPECTED = {
    "ufp4": {("fprop", "x"): U, ("fprop", "w"): U, ("dgrad", "dy"): U_SR, ("dgrad", "w"): U,
             ("wgrad", "dy"): U_SR, ("wgrad", "x"): U},
    "nvfp4": {
        ("fprop", "x"): ("e2m1", "rtn", (1, 16), "e4m3", None),
        ("fprop", "w"): ("e2m1", "rtn", (16, 16), "e4m3", None),
        ("dgrad", "dy"): ("e2m1", "sr", (1, 16), "e4m3", None),
        ("dgrad", "w"): ("e2m1", "rtn", (16, 16), "e4m3", None),
        ("wgrad", "dy"): ("e2m1", "sr", (1, 16), "e4m3", 16),
        ("wgrad", "x"): ("e2m1", "rtn", (1, 16), "e4m3", 16),
    },
    "mxfp4": {
        ("fprop", "x"): ("e2m1", "rtn", (1, 32), "e8m0", None),
        ("fprop", "w"): ("e2m1", "rtn", (1, 32), "e8m0", None),
        ("dgrad", "dy"): ("e2m1", "sr", (1, 32), "e8m0", None),
        ("dgrad", "w"): ("e2m1", "rtn", (1, 32), "e8m0", None),
        ("wgrad", "dy"): ("e2m1", "sr", (1, 32), "e8m0", 32),
        ("wgrad", "x"): ("e2m1", "rtn", (1, 32), "e8m0", 32),
    },
    "bf16": {(g, o): (None, "rtn", (1, 16), "e4m3", None) for g, ops in
             {"fprop": ("x", "w"), "dgrad": ("dy", "w"), "wgrad": ("dy", "x")}.items() for o in ops},
}


@pytest.fixture
def operands():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(T, IN, generator=gen, requires_grad=True)
    w = torch.randn(OUT, IN, generator=gen, requires_grad=True)
    gy = torch.randn(T, OUT, generator=gen)
    return x, w, gy


def _run(x, w, gy, recipe, seed=0):
    torch.manual_seed(seed)
    with trace(keep_tensors=True) as events:
        y = fp4_linear(x, w, None, recipe)
        dx, dw = torch.autograd.grad(y, (x, w), gy)
    return y, dx, dw, events


def _raw_operands(x, w, gy):
    x, w = x.detach(), w.detach()
    return {("fprop", "lhs"): x, ("fprop", "rhs"): w, ("dgrad", "lhs"): gy, ("dgrad", "rhs"): w.t(),
            ("wgrad", "lhs"): gy.t(), ("wgrad", "rhs"): x.t()}


@pytest.mark.parametrize("name", ["ufp4", "nvfp4", "mxfp4", "bf16"])
def test_recipe_placement_is_traced_as_specified(operands, name):
    x, w, gy = operands
    recipe = make_recipe(name)
    _, _, _, events = _run(x, w, gy, recipe)
    assert [(e.gemm, e.role) for e in events] == [(g, r) for g in ("fprop", "dgrad", "wgrad") for r in ("lhs", "rhs")]
    got = {(e.gemm, e.operand): (e.spec.grid, e.spec.rounding, e.spec.fmt.block, e.spec.fmt.scale, e.rht) for e in events}
    assert got == EXPECTED[name]
    raw = _raw_operands(x, w, gy)
    for e in events:  # each GEMM saw the right operand, transformed as traced
        operand = raw[(e.gemm, e.role)]  # zero-padded along the contraction axis as qgemm does
        operand = F.pad(operand, (0, e.before.shape[1] - operand.shape[1]))
        expected_before = rht(operand, e.rht, recipe.rht_seed) if e.rht else operand
        assert torch.allclose(e.before, expected_before, atol=1e-6)
        if e.spec.rounding == "sr":
            assert e.spec.fmt.headroom == (17 / 16 if e.spec.fmt.scale == "e4m3" else 1.0)


@pytest.mark.parametrize("name", ["ufp4", "nvfp4", "mxfp4"])
def test_traced_operands_are_rounded_as_specified(operands, name):
    """RTN operands equal an independent fake_quantize of what the GEMM saw; SR operands lie on the
    grid at the same block scales, differ from RTN, and change with the RNG; RTN ones do not."""
    x, w, gy = operands
    recipe = make_recipe(name)
    _, _, _, ev1 = _run(x, w, gy, recipe, seed=1)
    _, _, _, ev2 = _run(x, w, gy, recipe, seed=2)
    for e1, e2 in zip(ev1, ev2):
        grid = get_grid(e1.spec.grid)
        rtn = fake_quantize(e1.before, grid, e1.spec.fmt, "rtn")
        if e1.spec.rounding == "rtn":
            assert torch.equal(e1.after, rtn) and torch.equal(e1.after, e2.after)
            continue
        assert not torch.equal(e1.after, e2.after) and not torch.equal(e1.after, rtn)
        q = quantize(e1.before, grid, e1.spec.fmt, "sr")
        br, bc = e1.spec.fmt.block
        scale = q.scales.repeat_interleave(br, 0).repeat_interleave(bc, 1)[: e1.after.shape[0], : e1.after.shape[1]]
        codes = torch.where(scale > 0, e1.after / scale, torch.zeros_like(scale))
        on_grid = (codes.abs()[..., None] - grid.tensor()).abs().amin(-1)
        assert on_grid.max() < 1e-4


def test_function_outputs_are_the_products_of_the_traced_operands(operands):
    x, w, gy = operands
    y, dx, dw, events = _run(x, w, gy, make_recipe("ufp4"))
    by = {(e.gemm, e.role): e.after for e in events}  # T = 48 and IN = 64: no padding under ufp4
    assert torch.allclose(y, by["fprop", "lhs"] @ by["fprop", "rhs"].t(), atol=1e-5)
    assert torch.allclose(dx, by["dgrad", "lhs"] @ by["dgrad", "rhs"].t(), atol=1e-5)
    assert torch.allclose(dw, by["wgrad", "lhs"] @ by["wgrad", "rhs"].t(), atol=1e-5)


@pytest.mark.parametrize("name", ["ufp4", "nvfp4", "mxfp4"])
def test_fp4_gradients_approximate_full_precision(operands, name):
    x, w, gy = operands
    y, dx, dw, _ = _run(x, w, gy, make_recipe(name))
    y_ref = F.linear(x, w)
    dx_ref, dw_ref = torch.autograd.grad(y_ref, (x, w), gy)
    for a, b in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
        assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.97
        assert not torch.equal(a, b)


def test_bf16_recipe_is_f_linear_and_dtypes_are_kept():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 16, 64, generator=gen).bfloat16().requires_grad_()
    layer = FP4Linear(64, 32, make_recipe("ufp4"), dtype=torch.bfloat16)
    y = layer(x)
    y.sum().backward()
    assert y.dtype == x.grad.dtype == layer.weight.grad.dtype == layer.bias.grad.dtype == torch.bfloat16
    assert torch.allclose(layer.bias.grad.float(), torch.full((32,), 64.0))
    x64 = torch.randn(8, 64, dtype=torch.float64, generator=gen)
    w64 = torch.randn(32, 64, dtype=torch.float64, generator=gen)
    assert torch.equal(fp4_linear(x64, w64, None, make_recipe("bf16")), x64 @ w64.t())
