"""Gated feed-forward layers (SwiGLU and transformers' `*MLP` with gate/up/down) for decoding.

`gated_mlp(mlp, x)` = `down(act(gate(x)) * up(x))` with gate|up as one matmul over their packed
weights (kpop.rollout.builtin.packed): the module's `act_fn`, SiLU where it has none (SwiGLU).
`swiglu(gate_up, act)` is the middle, `act(gate) * up` over the two halves: for SiLU in float32
or bfloat16 one native pass (kpop.rollout.builtin.native.swiglu; rows over torch's threads) in
place of a split, a `silu` and a `mul`; torch's ops otherwise. Same values as the module's
forward up to the matmul's summation order and the native exponential (within 2 ulp; bf16 results
rounded once, from float32).
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from kpop.rollout.builtin import native
from kpop.rollout.builtin.matmul import module_linear
from kpop.rollout.builtin.packed import fused_output, packed, rows


def gated_mlp(mlp, x: torch.Tensor) -> torch.Tensor:
    gate_up = fused_output(mlp, "gate_up", [mlp.gate_proj, mlp.up_proj], x)
    return module_linear(mlp.down_proj, swiglu(gate_up, getattr(mlp, "act_fn", F.silu)))


def swiglu_weights(mlp) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(gate|up packed [2D, h], down [h, D]) of a SiLU-gated MLP of plain bias-free linears (the
    packed tensor `gated_mlp`'s matmul uses), None for any other: what `native.ffn_row` takes for
    a MoE's shared expert (kpop.rollout.builtin.moe_decode). A dense layer's one row stays on
    `gated_mlp`'s blocked products: through `ffn_row` the medium Llama's step took 1.02x as long
    (8 alternating pairs, 0.98-1.33)."""
    # The module's own dicts, read directly: through `nn.Module.__getattr__` this took 19 us, not 5.
    modules = mlp._modules
    gate, up, down = (modules.get(name) for name in ("gate_proj", "up_proj", "down_proj"))
    act = modules["act_fn"] if "act_fn" in modules else mlp.__dict__.get("act_fn", F.silu)
    if any(type(lin) is not nn.Linear or lin.bias is not None for lin in (gate, up, down)) or not _is_silu(act):
        return None
    weights = [lin._parameters["weight"] for lin in (gate, up, down)]
    return packed(mlp, "gate_up.weight", weights[:2], rows), weights[2]


def swiglu(gate_up: torch.Tensor, act=F.silu) -> torch.Tensor:
    """act(gate) * up for gate, up = gate_up's two halves on the last dim."""
    if _is_silu(act) and native.fits(gate_up, dtype=gate_up.dtype):
        return native.swiglu(gate_up)
    gate, up = gate_up.chunk(2, -1)
    return act(gate) * up


def _is_silu(act) -> bool:
    return act is F.silu or type(act) in _silu_modules()


@cache
def _silu_modules() -> tuple[type, ...]:
    from transformers.activations import SiLUActivation

    return nn.SiLU, SiLUActivation
