"""Gated feed-forward layers (SwiGLU and transformers' `*MLP` with gate/up/down) for decoding.

`gated_mlp(mlp, x)` = `down(act(gate(x)) * up(x))` with gate|up as one matmul over their packed
weights (kpop.rollout.builtin.packed): the module's `act_fn`, SiLU where it has none (SwiGLU).
Same values as the module's forward up to the matmul's summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kpop.rollout.builtin.matmul import module_linear
from kpop.rollout.builtin.packed import fused_linear


def gated_mlp(mlp, x: torch.Tensor) -> torch.Tensor:
    gate, up = fused_linear(mlp, "gate_up", [mlp.gate_proj, mlp.up_proj], x)
    return module_linear(mlp.down_proj, getattr(mlp, "act_fn", F.silu)(gate) * up)
