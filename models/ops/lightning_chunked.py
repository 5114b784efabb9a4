"""Chunked Lightning Attention (Lightning Attention-2 style): the training and prefill form.

The sequence is cut into chunks of C tokens (the last one may be shorter). Inside a chunk the
output is the masked quadratic form; across chunks a d x d state per head carries the past:

    o_i   = scale * [ (q_i exp((i+1) g)) S_prev  +  sum_{j<=i} exp((i-j) g) (q_i . k_j) v_j ]
    S_new = exp(L g) S_prev + sum_j exp((L-1-j) g) k_j^T v_j            (L = chunk length)

with i, j positions inside the chunk. Cost O(T C d + T d^2), memory O(C^2 + d^2) per head.
Everything is plain PyTorch, so autograd supplies the backward pass; float32 inside. Without an
initial state the first chunk has no past: its inter-chunk term and its state decay are skipped
rather than computed on zeros (the same values; a batched prefill's [B, H, d, d] zeros, their
product and decayed copy were half of a short prompt's Lightning layer: 64 rows of 8 tokens, 12
heads of 64, four state-sized temporaries a layer).
"""

from __future__ import annotations

import torch


def _decay_tables(g: torch.Tensor, length: int, acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pos = torch.arange(length, device=g.device, dtype=acc)
    diff = pos[:, None] - pos[None, :]
    intra = torch.where(diff >= 0, torch.exp(g[:, None, None] * diff.clamp(min=0)), torch.zeros((), device=g.device))
    q_decay = torch.exp(g[:, None] * (pos + 1))  # [H, L]
    k_decay = torch.exp(g[:, None] * (length - 1 - pos))  # [H, L]
    return intra, q_decay, k_decay


def chunked_lightning_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    B, T, H, K = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)  # float32 inside, float64 kept for references
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    gf = g.to(acc).to(q.device)
    qf, kf, vf = (x.to(acc).transpose(1, 2) for x in (q, k, v))  # [B, H, T, D]
    qf = qf * scale
    state = None if initial_state is None else initial_state.to(acc)
    tables = {}
    outs = []
    for start in range(0, T, chunk_size):
        length = min(chunk_size, T - start)
        if length not in tables:
            tables[length] = _decay_tables(gf, length, acc)
        intra, q_decay, k_decay = tables[length]
        qc, kc, vc = (x[:, :, start : start + length] for x in (qf, kf, vf))
        o = ((qc @ kc.transpose(-1, -2)) * intra) @ vc
        fresh = (kc * k_decay[..., None]).transpose(-1, -2) @ vc
        if state is None:
            state = fresh
        else:
            o = o + (qc * q_decay[..., None]) @ state
            state = torch.exp(gf * length)[:, None, None] * state + fresh
        outs.append(o)
    if state is None:
        state = qf.new_zeros(B, H, K, V)
    out = torch.cat(outs, dim=2) if outs else vf
    return out.transpose(1, 2).to(v.dtype), (state if output_final_state else None)
