"""Gated feed-forward layers (SwiGLU and transformers' `*MLP` with gate/up/down) for decoding.

`gated_mlp(mlp, x)` = `down(act(gate(x)) * up(x))` with gate|up as one matmul over their packed
weights (kpop.rollout.builtin.packed): the module's `act_fn`, SiLU where it has none (SwiGLU).
`swiglu(gate_up, act)` is the middle, `act(gate) * up` over the two halves: one native pass for
float32 SiLU (kpop.rollout.builtin.native.swiglu; rows over torch's threads) in place of a split,
a `silu` and a `mul`, torch's ops otherwise. Same values as the module's forward up to the
matmul's summation order (the native SiLU's exp is libm's, so to float32 rounding).
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from kpop.rollout.builtin import native
from kpop.rollout.builtin.matmul import module_linear
from kpop.rollout.builtin.packed import fused_output


def gated_mlp(mlp, x: torch.Tensor) -> torch.Tensor:
    gate_up = fused_output(mlp, "gate_up", [mlp.gate_proj, mlp.up_proj], x)
    return module_linear(mlp.down_proj, swiglu(gate_up, getattr(mlp, "act_fn", F.silu)))


def swiglu(gate_up: torch.Tensor, act=F.silu) -> torch.Tensor:
    """act(gate) * up for gate, up = gate_up's two halves on the last dim."""
    if (act is F.silu or type(act) in _silu_modules()) and native.fits(gate_up):
        return native.swiglu(gate_up)
    gate, up = gate_up.chunk(2, -1)
    return act(gate) * up


@cache
def _silu_modules() -> tuple[type, ...]:
    from transformers.activations import SiLUActivation

    return nn.SiLU, SiLUActivation
