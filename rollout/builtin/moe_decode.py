"""The hybrid's MoE feed-forward for decoding: `MoE.forward`'s result with one host sync per layer.

`MoE.forward` (kpop.models.layers.moe) finds each expert's tokens with a `nonzero` per expert; here
the (token, slot) pairs are sorted by expert once and each expert takes its own block. Experts
are visited in increasing id and their outputs accumulated in the same order, so the sum is the one
`MoE.forward` computes (a single row skips the sort and the scatter: its k experts' outputs are
added directly). Router load is not counted (the engine's model is in eval mode, where `MoEGate`
counts nothing either). A dense SwiGLU layer goes through `gated_mlp`; any other module is simply
called.

Experts' weights are packed (kpop.rollout.builtin.packed: the parameters become views of the stacks,
so weight updates land there): [E, 2I, h] (gate | up) and [E, h, I] (down). Several rows: the
(token, slot) rows sorted by expert are padded to [E, M, h] (M = the busiest expert's rows; one host
sync per layer for M) and go through two `bmm` calls over all experts, so a layer costs a dozen ops
whatever E. `bmm` runs the experts on all cores where `grouped_mm` ran one single-threaded matmul
per expert: medium hybrid end to end 200-216 -> 247-298 tok/s at 16 rows, 466-515 -> 495-576 at 64.
One row: each chosen expert is two linears on its slices of the stacks. The shared expert runs
gate|up as one matmul too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kpop.rollout.builtin.gated_mlp import gated_mlp
from kpop.rollout.builtin.matmul import linear
from kpop.rollout.builtin.packed import packed, stacked


def _expert(gate_up: torch.Tensor, down: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    gate, up = linear(x, gate_up).chunk(2, -1)
    return linear(F.silu(gate) * up, down)


def moe_forward(mlp, x: torch.Tensor) -> torch.Tensor:
    from kpop.models.layers.moe import MoE

    if not isinstance(mlp, MoE):
        return gated_mlp(mlp, x) if _is_swiglu(mlp) else mlp(x)
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    idx, weights, _ = mlp.gate(flat)
    if flat.shape[0] == 1:
        out = _one_token(mlp, flat, idx[0], weights[0])
    else:
        out = _tokens(mlp, flat, idx, weights)
    out = out.to(x.dtype)
    if mlp.shared_experts is not None:
        out = out + gated_mlp(mlp.shared_experts, flat)
    return out.reshape(shape)


def _one_token(mlp, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One row: the chosen experts' outputs summed in increasing expert id (index_add's order)."""
    w_gate_up, w_down = _stacks(mlp)
    out = None
    for e, w in sorted(zip(idx.tolist(), weights.tolist())):
        contrib = _expert(w_gate_up[e], w_down[e], x).float() * w  # w came from a float32: the product is index_add's
        out = contrib if out is None else out + contrib
    return out


def _tokens(mlp, flat: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    w_gate_up, w_down = _stacks(mlp)
    k, num_experts = idx.shape[1], w_gate_up.shape[0]
    flat_idx = idx.flatten()
    order = flat_idx.argsort(stable=True)
    counts = torch.bincount(flat_idx, minlength=num_experts)
    experts, tokens = flat_idx[order], order // k
    slot = torch.arange(order.numel(), device=flat.device) - (counts.cumsum(0) - counts)[experts]
    padded = flat.new_zeros(num_experts, int(counts.max()), flat.shape[-1])
    padded[experts, slot] = flat[tokens]
    gate_up = torch.bmm(padded, w_gate_up.transpose(1, 2))
    inner = gate_up.shape[-1] // 2
    y = torch.bmm(F.silu(gate_up[..., :inner]) * gate_up[..., inner:], w_down.transpose(1, 2))[experts, slot]
    # one index_add_ in expert order: the accumulation order of MoE.forward's per-expert adds
    out = torch.zeros_like(flat, dtype=torch.float32)
    return out.index_add_(0, tokens, y.float() * weights.flatten()[order][:, None])


def _stacks(mlp) -> tuple[torch.Tensor, torch.Tensor]:
    """The experts' weights as [E, 2I, h] and [E, h, I] tensors that the parameters are views of."""
    gate_up = packed(mlp, "experts.gate_up", [p for e in mlp.experts for p in (e.gate_proj.weight, e.up_proj.weight)], stacked(2))
    down = packed(mlp, "experts.down", [e.down_proj.weight for e in mlp.experts], stacked(1))
    return gate_up, down


def _is_swiglu(mlp) -> bool:
    from kpop.models.layers.mlp import SwiGLU

    return isinstance(mlp, SwiGLU)
