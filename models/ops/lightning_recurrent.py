"""Recurrent Lightning Attention: the decoding form, one d x d state per head.

    S_t = exp(g) * S_{t-1} + k_t^T v_t,        o_t = scale * q_t S_t

Shapes as in `lightning_naive`. Memory is O(B H K V) whatever the sequence length; the state is
kept in float32 (decay products underflow badly in half precision).
"""

from __future__ import annotations

import torch


def recurrent_lightning_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    B, T, H, K = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)  # float32 inside, float64 kept for references
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    decay = torch.exp(g.to(acc).to(q.device))[None, :, None, None]
    state = q.new_zeros(B, H, K, V, dtype=acc) if initial_state is None else initial_state.to(acc)
    outs = []
    for t in range(T):
        kt, vt = k[:, t].to(acc), v[:, t].to(acc)
        state = decay * state + kt[..., :, None] * vt[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t].to(acc) * scale, state))
    out = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, V, dtype=acc)
    return out.to(v.dtype), (state if output_final_state else None)
