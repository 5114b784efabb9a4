"""The hybrid's MoE feed-forward for decoding: `MoE.forward`'s result with one host sync per layer.

`MoE.forward` (kpop.models.layers.moe) finds each expert's tokens with a `nonzero` per expert;
here the (token, slot) pairs are sorted by expert once and each expert takes a contiguous slice.
Experts are visited in increasing id and their outputs accumulated in the same order, so the sum
is the one `MoE.forward` computes (a single row skips the sort and the scatter: its k experts'
outputs are added directly). Router load is not counted (the engine's model is in eval mode,
where `MoEGate` counts nothing either). A module that is not an `MoE` (dense SwiGLU layers) is
simply called.

Several rows: the experts' weights are stacked, [E, 2I, h] (gate | up) and [E, h, I] (down), and
the (token, slot) rows sorted by expert go through two `grouped_mm` calls, so a layer costs a
dozen ops whatever E, and no host sync. The stacks are the experts' own storage: at the first use
their parameters are re-pointed into them (same values, same Parameter objects), so a weight
update that copies into the parameters updates the stacks; a parameter that was given other
storage since (e.g. `model.to(...)`) makes the stacks rebuilt.
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
    w_gate_up, w_down = _stacks(mlp)
    k, num_experts = idx.shape[1], w_gate_up.shape[0]
    flat_idx = idx.flatten()
    order = flat_idx.argsort(stable=True)
    offsets = torch.bincount(flat_idx, minlength=num_experts).cumsum(0).to(torch.int32)
    tokens = order // k
    gate_up = F.grouped_mm(flat[tokens], w_gate_up.transpose(1, 2), offs=offsets)
    inner = gate_up.shape[-1] // 2
    y = F.grouped_mm(F.silu(gate_up[:, :inner]) * gate_up[:, inner:], w_down.transpose(1, 2), offs=offsets)
    # one index_add_ in expert order: the accumulation order of MoE.forward's per-expert adds
    out = torch.zeros_like(flat, dtype=torch.float32)
    return out.index_add_(0, tokens, y.float() * weights.flatten()[order][:, None])


def _stacks(mlp) -> tuple[torch.Tensor, torch.Tensor]:
    """The experts' weights as [E, 2I, h] and [E, h, I] tensors that the parameters are views of."""
    params = [p for e in mlp.experts for p in (e.gate_proj.weight, e.up_proj.weight, e.down_proj.weight)]
    cached = getattr(mlp, "_decode_stacks", None)
    if cached is not None and cached[2] == [p.data_ptr() for p in params]:
        return cached[0], cached[1]
    with torch.inference_mode(False), torch.no_grad():  # plain tensors: weight updates copy into them
        gate_up = torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in mlp.experts])
        down = torch.stack([e.down_proj.weight for e in mlp.experts])
        inner = mlp.experts[0].gate_proj.weight.shape[0]
        for i, e in enumerate(mlp.experts):
            e.gate_proj.weight.data, e.up_proj.weight.data = gate_up[i, :inner], gate_up[i, inner:]
            e.down_proj.weight.data = down[i]
    mlp._decode_stacks = (gate_up, down, [p.data_ptr() for p in params])
    return gate_up, down
