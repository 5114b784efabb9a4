"""Naive (quadratic, fully materialised) Lightning Attention: the reference the fast forms are tested against.

Shapes: q, k [B, T, H, K]; v [B, T, H, V]; g [H] log-decay (< 0); state [B, H, K, V].
With scale c (default K^-1/2) and S_0 the initial state,

    o_t = c * ( sum_{s<=t} exp((t-s) g) (q_t . k_s) v_s  +  exp((t+1) g) q_t S_0 )
    S_T = sum_s exp((T-1-s) g) k_s^T v_s + exp(T g) S_0

which is the closed form of the recurrence S_t = exp(g) S_{t-1} + k_t^T v_t, o_t = c q_t S_t.
Computed in float32 (float64 inputs stay float64), returned in the dtype of v.
"""

from __future__ import annotations

import torch


def naive_lightning_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    dtype = v.dtype
    acc = torch.promote_types(q.dtype, torch.float32)  # float32 inside, float64 kept for references
    T = q.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qf, kf, vf = (x.to(acc).transpose(1, 2) for x in (q, k, v))  # [B, H, T, D]
    gf = g.to(acc).to(q.device)[:, None]  # [H, 1]
    pos = torch.arange(T, device=q.device, dtype=acc)
    diff = pos[:, None] - pos[None, :]
    causal = diff >= 0
    decay = torch.where(causal, torch.exp(gf[..., None] * diff.clamp(min=0)), torch.zeros((), device=q.device))  # [H,T,T]
    scores = (qf @ kf.transpose(-1, -2)) * decay
    out = scores @ vf
    final = torch.einsum("hs,bhsk,bhsv->bhkv", torch.exp(gf * (T - 1 - pos)), kf, vf) if output_final_state else None
    if initial_state is not None:
        s0 = initial_state.to(acc)
        out = out + (qf * torch.exp(gf * (pos + 1))[..., None]) @ s0
        if final is not None:
            final = final + torch.exp(gf * T)[..., None] * s0
    out = (out * scale).transpose(1, 2).to(dtype)
    return out, final
