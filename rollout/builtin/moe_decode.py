"""The hybrid's MoE feed-forward for decoding: `MoE.forward`'s result with one host sync per layer.

`MoE.forward` (kpop.models.layers.moe) finds each expert's tokens with a `nonzero` per expert;
here the (token, slot) pairs are sorted by expert once and each expert takes a contiguous slice.
Experts are visited in increasing id and their outputs accumulated in the same order, so the sum
is the one `MoE.forward` computes (a single row skips the sort and the scatter: its k experts'
outputs are added directly). Router load is not counted (the engine's model is in eval mode,
where `MoEGate` counts nothing either). A module that is not an `MoE` (dense SwiGLU layers) is
simply called.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _swiglu(mlp, x: torch.Tensor) -> torch.Tensor:
    """`SwiGLU.forward` on the module's weights without three nested module calls (bias-free layers)."""
    return F.linear(F.silu(F.linear(x, mlp.gate_proj.weight)) * F.linear(x, mlp.up_proj.weight), mlp.down_proj.weight)


def moe_forward(mlp, x: torch.Tensor) -> torch.Tensor:
    from kpop.models.layers.moe import MoE

    if not isinstance(mlp, MoE):
        return mlp(x)
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    idx, weights, _ = mlp.gate(flat)
    if flat.shape[0] == 1:
        out = _one_token(mlp, flat, idx[0], weights[0])
    else:
        out = _tokens(mlp, flat, idx, weights)
    out = out.to(x.dtype)
    if mlp.shared_experts is not None:
        out = out + _swiglu(mlp.shared_experts, flat)
    return out.reshape(shape)


def _one_token(mlp, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One row: the chosen experts' outputs summed in increasing expert id (index_add's order)."""
    out = None
    for e, w in sorted(zip(idx.tolist(), weights.tolist())):
        contrib = _swiglu(mlp.experts[e], x).float() * w  # w came from a float32: the product is index_add's
        out = contrib if out is None else out + contrib
    return out


def _tokens(mlp, flat: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    k, num_experts = idx.shape[1], len(mlp.experts)
    flat_idx = idx.flatten()
    order = flat_idx.argsort(stable=True)
    counts = torch.bincount(flat_idx, minlength=num_experts).tolist()
    tokens, slot_weights = order // k, weights.flatten()[order]
    out = torch.zeros_like(flat, dtype=torch.float32)
    start = 0
    for e, n in enumerate(counts):
        if n:
            rows = tokens[start : start + n]
            out.index_add_(0, rows, _swiglu(mlp.experts[e], flat[rows]).float() * slot_weights[start : start + n, None])
            start += n
    return out
