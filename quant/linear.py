"""FP4 linear layer: a custom autograd Function running all three training GEMMs through qgemm.

    forward   Y  = Q(X)·Q(W)ᵀ + b                   (recipe.fprop, contraction over in-features)
    backward  dX = Q(dY)·Q(Wᵀ)ᵀ = dY·W              (recipe.dgrad, contraction over out-features)
              dW = Q(dYᵀ)·Q(Xᵀ)ᵀ = dYᵀ·X            (recipe.wgrad, contraction over tokens)
              db = Σ_tokens dY                      (high precision)

Each operand is re-quantised for each GEMM along that GEMM's contraction axis, from the
high-precision X and W saved in forward (a 4-bit copy quantised along one axis cannot serve the
other). GEMMs run in float32 (float64 for float64 inputs) and results are cast back to the input
dtype, so bf16 models stay bf16. Leading dimensions of X are flattened into the token axis.
"""

from __future__ import annotations

import torch
from torch import nn

from kpop.quant.gemm import qgemm
from kpop.quant.recipe import Recipe


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class FP4LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, recipe: Recipe):
        cdt = _compute_dtype(x.dtype)
        x2 = x.reshape(-1, x.shape[-1]).to(cdt)
        w = weight.to(cdt)
        y = qgemm(x2, w, recipe.fprop, "fprop", recipe.rht_seed, recipe.fp8_gemm)
        if bias is not None:
            y = y + bias.to(cdt)
        ctx.save_for_backward(x2, w)
        ctx.recipe, ctx.x_shape, ctx.x_dtype = recipe, x.shape, x.dtype
        ctx.w_dtype, ctx.has_bias = weight.dtype, bias is not None
        return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x2, w = ctx.saved_tensors
        recipe: Recipe = ctx.recipe
        dy = grad_y.reshape(-1, grad_y.shape[-1]).to(x2.dtype)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = qgemm(dy, w.t(), recipe.dgrad, "dgrad", recipe.rht_seed, recipe.fp8_gemm)
            dx = dx.to(ctx.x_dtype).reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            dw = qgemm(dy.t(), x2.t(), recipe.wgrad, "wgrad", recipe.rht_seed, recipe.fp8_gemm).to(ctx.w_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum(0).to(ctx.w_dtype)
        return dx, dw, db, None


def fp4_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, recipe: Recipe) -> torch.Tensor:
    """F.linear with the recipe's quantised GEMMs."""
    return FP4LinearFunction.apply(x, weight, bias, recipe)


class FP4Linear(nn.Linear):
    """nn.Linear whose forward is `fp4_linear`; parameters and state_dict keys are unchanged."""

    def __init__(self, in_features: int, out_features: int, recipe: Recipe, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.recipe = recipe

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: Recipe) -> FP4Linear:
        """Wrap an existing layer, sharing its Parameter objects (optimiser state stays valid)."""
        new = cls(linear.in_features, linear.out_features, recipe, bias=linear.bias is not None, device="meta")
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp4_linear(x, self.weight, self.bias, self.recipe)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, recipe={self.recipe.name}"
