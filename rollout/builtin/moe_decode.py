"""The hybrid's MoE feed-forward for decoding: `MoE.forward`'s result with one host sync per layer.

`MoE.forward` (kpop.models.layers.moe) finds each expert's tokens with a `nonzero` per expert;
here the (token, slot) pairs are sorted by expert once and each expert takes a contiguous slice.
Experts are visited in increasing id and their outputs accumulated in the same order, so the sum
is the one `MoE.forward` computes. Router load is not counted (the engine's model is in eval mode,
where `MoEGate` counts nothing either). A module that is not an `MoE` (dense SwiGLU layers) is
simply called.
"""

from __future__ import annotations

import torch


def moe_forward(mlp, x: torch.Tensor) -> torch.Tensor:
    from kpop.models.layers.moe import MoE

    if not isinstance(mlp, MoE):
        return mlp(x)
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    idx, weights, _ = mlp.gate(flat)
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
            out.index_add_(0, rows, mlp.experts[e](flat[rows]).float() * slot_weights[start : start + n, None])
            start += n
    out = out.to(x.dtype)
    if mlp.shared_experts is not None:
        out = out + mlp.shared_experts(flat)
    return out.reshape(shape)
