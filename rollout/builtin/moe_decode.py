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
router's pick in one native call where the gate qualifies (`native.route_rows`; the gate's own
forward took 1.5 ms of a 64-row bf16 step, ~0.1 native), the (token, slot) rows sorted by expert
(one host sync per layer for the counts), each expert's block
through its own two products, `project` (kpop.rollout.builtin.matmul: oneDNN over a prepacked copy
of the expert's slices from 2 rows on, in bf16 from 1). Medium hybrid decode step, ms, per-expert /
the earlier form that padded the sorted rows to [E, M, h] for two `bmm` over all experts: 2 rows
18.5-19.7 / 25.2-27.1, 8 rows 25.7-27.5 / 29.9-30.3, 16 rows 30.9-31.3 / 33.8-35.0, 64 rows
61.8-62.9 / 67.5-67.7. One float32 row: the whole layer in two native calls where the gate and
the shared expert qualify (`native.route_row` for the router's pick, `native.ffn_row` for the
chosen experts and the shared expert, products included, their rows over torch's threads): a
layer with cold weights 320 against 490 us, the medium hybrid's one-row step 0.96x (8 alternating
pairs, 0.92-1.02). Otherwise each chosen expert's two products, no sort; the shared expert runs
gate|up as one matmul too.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from kpop.rollout.builtin import native, onednn
from kpop.rollout.builtin.gated_mlp import gated_mlp, swiglu, swiglu_weights
from kpop.rollout.builtin.matmul import on_onednn, project
from kpop.rollout.builtin.packed import packed, stacked


class _Stacks(NamedTuple):
    gate_up: torch.Tensor  # [E, 2I, h]
    down: torch.Tensor  # [E, h, I]
    experts: list[nn.Module]  # owners of each expert's prepacked copies
    weights: list[list[torch.Tensor]]  # per expert: its gate, up and down parameters


def _expert(stacks: _Stacks, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert `e` on rows x [n, h]: two products over its slices of the stacks."""
    expert, (gate_w, up_w, down_w) = stacks.experts[e], stacks.weights[e]
    gate_up = project(x, stacks.gate_up[e], None, expert, "gate_up", (gate_w, up_w))
    return project(swiglu(gate_up), stacks.down[e], None, expert, "down", (down_w,))


def moe_forward(mlp, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """`mlp(x)` for decoding (a MoE's output without its router logits), plus `residual` where given."""
    from kpop.models.layers.moe import MoE

    if not isinstance(mlp, MoE):
        out = gated_mlp(mlp, x) if _is_swiglu(mlp) else mlp(x)
        return out if residual is None else residual + out
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    if flat.shape[0] == 1:
        out = _one_row_native(mlp, flat)
        if out is None:
            out = _with_shared(mlp, flat, _one_token(mlp, flat, *_route_one(mlp.gate, flat)))
    else:
        if native.routable(mlp.gate, flat.dtype) and flat.is_contiguous():
            idx, weights = native.route_rows(flat, mlp.gate)
        else:
            idx, weights, _ = mlp.gate(flat)
        if native.fits(flat, dtype=flat.dtype) and idx.is_contiguous() and native.fits(weights):
            return _rows_native(mlp, flat, idx, weights, residual).view(shape)  # the residual added there
        out = _with_shared(mlp, flat, _tokens(mlp, flat, idx, weights))
    out = out.reshape(shape)
    return out if residual is None else residual + out


def _with_shared(mlp, flat: torch.Tensor, routed: torch.Tensor) -> torch.Tensor:
    """The routed experts' float32 sum in the rows' dtype, plus the shared expert's output."""
    out = routed.to(flat.dtype)
    return out if mlp.shared_experts is None else out + gated_mlp(mlp.shared_experts, flat)


def _rows_native(mlp, flat: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor,
                 residual: torch.Tensor | None) -> torch.Tensor:
    """`_tokens`, the shared expert and the residual add with the bookkeeping in two native calls
    (`native.moe_dispatch`: the sort by expert and the gather; `native.moe_combine`: the weighted
    sum in index_add's order and both adds, rounded where the torch ops round): the same values."""
    experts = experts_of(mlp, flat)
    stacks, packs = experts.stacks, experts.packs
    counts, pos, rows = native.moe_dispatch(flat, idx, len(stacks.experts))
    blocks, start = [], 0
    for e, n in enumerate(counts):
        if not n:
            blocks.append(None)
            continue
        block = rows[start : start + n]
        if packs is None or (n == 1 and not experts.one_row):
            blocks.append(_expert(stacks, e, block).contiguous())  # the chunked `bmm` gives a transposed view
        else:
            gate_up, down = packs[e]
            blocks.append(onednn.packed_linear(native.swiglu(onednn.packed_linear(block, gate_up)), down))
        start += n
    shared = None if mlp.shared_experts is None else gated_mlp(mlp.shared_experts, flat).contiguous()
    res = None if residual is None else residual.reshape(flat.shape).contiguous()
    return native.moe_combine(blocks, counts, idx, pos, weights, shared, res)


class _Experts(NamedTuple):
    stacks: _Stacks
    packs: list[tuple[torch.Tensor, torch.Tensor]] | None  # per expert: oneDNN copies of gate|up, down
    one_row: bool  # whether `project` takes a one-row block to oneDNN too (bf16: yes; float32: no)


def experts_of(mlp, x: torch.Tensor) -> _Experts:
    """The experts' stacks (`stacks_of`) and each expert's oneDNN copies (gate|up, down): the ones
    `_expert`'s `project` multiplies blocks of rows like x by, or None where `project` would not
    pick oneDNN for them. Checked once a layer: the data pointer and version counter of every
    expert parameter (an in-place update bumps a parameter's version, not its stack's), where
    `project` checks them per product (~18 us of the ~100 a 16-row bf16 expert product took, 112
    products a medium hybrid step) and `stacks_of` packs per call."""
    modules = mlp._modules["experts"]._modules.values()
    params = [e._modules[name]._parameters["weight"] for e in modules for name in ("gate_proj", "up_proj", "down_proj")]

    def state() -> tuple:
        return (x.dtype, x.device, *((p.data_ptr(), p._version) for p in params))

    hit = mlp.__dict__.get("_kpop_experts")
    if hit is not None and hit[0] == state():
        return hit[1]
    stacks = stacks_of(mlp)
    several = x.new_empty(2, x.shape[-1])
    packs = None
    if all(on_onednn(w, several) for w in (stacks.gate_up[0], stacks.down[0])):
        packs = [(onednn.prepacked(expert, "gate_up", tuple(weights[:2]), stacks.gate_up[e]),
                  onednn.prepacked(expert, "down", (weights[2],), stacks.down[e]))
                 for e, (expert, weights) in enumerate(zip(stacks.experts, stacks.weights))]
    one_row = all(on_onednn(w, several[:1]) for w in (stacks.gate_up[0], stacks.down[0]))
    experts = _Experts(stacks, packs, one_row)
    mlp.__dict__["_kpop_experts"] = (state(), experts)  # after `stacks_of`, which may re-point the parameters
    return experts


def _one_row_native(mlp, x: torch.Tensor) -> torch.Tensor | None:
    """The whole layer for one row (routing, the chosen experts, the shared expert) in two native
    calls, or None where it does not qualify (float32 throughout, a gate `native.route_row`
    routes, a plain SwiGLU shared expert or none)."""
    shared = mlp.shared_experts
    dense = None if shared is None else swiglu_weights(shared)
    if (shared is not None and dense is None) or not native.routes(x, mlp.gate):
        return None
    stacks = stacks_of(mlp)
    if not native.fits(stacks.gate_up, stacks.down, *(dense or ())):
        return None
    picked = sorted(zip(*native.route_row(x, mlp.gate)))  # increasing expert id: `_one_token`'s order
    return native.ffn_row(x.reshape(-1), stacks.gate_up, stacks.down, [e for e, _ in picked], [w for _, w in picked],
                          *(dense or (None, None)))


def _route_one(gate, x: torch.Tensor) -> tuple[list[int], list[float]]:
    """One row's (expert ids, weights): one native call where the gate qualifies, else the gate's own forward."""
    if native.routes(x, gate):
        return native.route_row(x, gate)
    idx, weights, _ = gate(x)
    return idx[0].tolist(), weights[0].tolist()


def _one_token(mlp, x: torch.Tensor, idx: list[int], weights: list[float]) -> torch.Tensor:
    """One row: the chosen experts' outputs summed in increasing expert id (index_add's order)."""
    out, stacks = None, stacks_of(mlp)
    for e, w in sorted(zip(idx, weights)):
        contrib = _expert(stacks, e, x).float() * w  # w came from a float32: the product is index_add's
        out = contrib if out is None else out + contrib
    return out


def _tokens(mlp, flat: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Several rows: the (token, slot) pairs sorted by expert, each expert's block through `_expert`."""
    stacks, flat_idx = stacks_of(mlp), idx.flatten()
    order = flat_idx.argsort(stable=True)
    tokens = order // idx.shape[1]
    rows, start, blocks = flat[tokens], 0, []
    for e, n in enumerate(torch.bincount(flat_idx, minlength=len(stacks.experts)).tolist()):
        if n:
            blocks.append(_expert(stacks, e, rows[start : start + n]))
            start += n
    # one index_add_ in expert order: the accumulation order of MoE.forward's per-expert adds
    out = torch.zeros_like(flat, dtype=torch.float32)
    return out.index_add_(0, tokens, torch.cat(blocks).float() * weights.flatten()[order][:, None])


def stacks_of(mlp) -> _Stacks:
    """The experts' weights as [E, 2I, h] and [E, h, I] tensors that the parameters are views of."""
    # The modules' own dicts, read directly: `nn.Module.__getattr__` for 3 x E weights cost ~35 us
    # a layer (medium hybrid), a fifth of a one-row MoE layer's work outside its matmuls.
    experts = list(mlp._modules["experts"]._modules.values())
    weights = [[e._modules[name]._parameters["weight"] for name in ("gate_proj", "up_proj", "down_proj")] for e in experts]
    gate_up = packed(mlp, "experts.gate_up", [w for gate, up, _ in weights for w in (gate, up)], stacked(2))
    down = packed(mlp, "experts.down", [down for _, _, down in weights], stacked(1))
    return _Stacks(gate_up, down, experts, weights)


def _is_swiglu(mlp) -> bool:
    from kpop.models.layers.mlp import SwiGLU

    return isinstance(mlp, SwiGLU)
