"""TransMLA-style conversion of a (QK-norm-folded) GQA attention into MLA weights.

Source per head (d dims): the first R = qk_rope_head_dim dims carry RoPE (rotate-half layout, as
the hybrid's partial RoPE), the other d - R do not. With Hkv key/value heads and calibration inputs X:

1. RoPE key (PCA applied only to the RoPE dims): for each frequency pair j the Hkv keys'
   2-vectors are mixed by the top eigenvector u_j of their calibration Gram matrix (a rotation
   over heads commutes with RoPE, which rotates within a pair). The shared MLA rope key is
   sum_n u_j[n] k_n; query head h (kv head n) gets u_j[n] * q_h. Exact when Hkv = 1.
   The rotate-half pairs (j, j + R/2) are reordered to the interleaved MLA layout.
2. Latent: the stacked no-RoPE keys and values of all kv heads, Y = X W^T, are compressed by PCA
   (top-r eigenvectors U of Y^T Y): kv_a = U^T W, kv_b = U rows of each head's kv head. Lossless
   when r >= Hkv (2d - R). kv_a_layernorm's weight is set to the calibration RMS of the latent so
   the RMSNorm is ~identity on calibration data.
3. q_proj = [no-RoPE query dims | rescaled, reordered RoPE dims]; dense = o_proj; the score scale
   1/sqrt(qk_nope + qk_rope) = 1/sqrt(d) is unchanged. Query biases are dropped (MLA q_proj has none).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GQAWeights:
    q: torch.Tensor  # [H d, hidden] (QK-norm already folded)
    k: torch.Tensor  # [Hkv d, hidden]
    v: torch.Tensor  # [Hkv d, hidden]
    o: torch.Tensor  # [hidden, H d]
    k_bias: torch.Tensor | None = None
    v_bias: torch.Tensor | None = None


def interleave_permutation(rope: int) -> torch.Tensor:
    half = rope // 2
    return torch.stack([torch.arange(half), torch.arange(half) + half], 1).flatten()


def _top_eigvecs(gram: torch.Tensor, r: int) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(gram)
    return vecs[:, vals.argsort(descending=True)[:r]]


def convert_to_mla(w: GQAWeights, x: torch.Tensor, heads: int, kv_heads: int, head_dim: int, rope: int, rank: int) -> dict[str, torch.Tensor]:
    """Returns MLA parameters (names relative to `attention.`), float64 math, source dtype out."""
    dt, d, rep, half = w.q.dtype, head_dim, heads // kv_heads, rope // 2
    q, k, v = (t.double().view(-1, d, t.shape[-1]) for t in (w.q, w.k, w.v))  # [heads, d, hidden]
    kb = None if w.k_bias is None else w.k_bias.double().view(kv_heads, d)
    vb = None if w.v_bias is None else w.v_bias.double().view(kv_heads, d)
    xd = x.double()
    k_act = torch.einsum("th,ndh->tnd", xd, k) + (0 if kb is None else kb)
    # 1. shared rope key by per-pair PCA over kv heads
    u = torch.empty(half, kv_heads, dtype=torch.float64)
    for j in range(half):
        pair = k_act[:, :, [j, j + half]]
        u[j] = _top_eigvecs(torch.einsum("tnc,tmc->nm", pair, pair), 1)[:, 0]
    u_full = torch.cat([u, u], 0)  # [rope, kv_heads], same mixing for both members of a pair
    perm = interleave_permutation(rope)
    k_rope = torch.einsum("rn,nrh->rh", u_full, k[:, :rope])[perm]
    k_rope_b = None if kb is None else torch.einsum("rn,nr->r", u_full, kb[:, :rope])[perm]
    # 2. latent by PCA of the stacked no-rope keys and values
    stacked = torch.cat([torch.cat([k[n, rope:], v[n]]) for n in range(kv_heads)])  # [Hkv (2d - R), hidden]
    stacked_b = None if kb is None else torch.cat([torch.cat([kb[n, rope:], vb[n]]) for n in range(kv_heads)])
    y = xd @ stacked.T + (0 if stacked_b is None else stacked_b)
    basis = _top_eigvecs(y.T @ y, rank)  # [Hkv (2d - R), r]
    latent_w = basis.T @ stacked
    latent_b = None if stacked_b is None else basis.T @ stacked_b
    latent_rms = (y @ basis).pow(2).mean().sqrt()
    per_kv = basis.view(kv_heads, 2 * d - rope, rank)
    kv_b = torch.cat([per_kv[n // rep] for n in range(heads)])  # [H (nope + d), r]
    # 3. queries: nope dims unchanged, rope dims scaled by u of the head's kv group and reordered
    q_rope = torch.stack([(u_full[:, n // rep, None] * q[n, :rope])[perm] for n in range(heads)])
    q_new = torch.cat([q[:, rope:], q_rope], 1).reshape(-1, q.shape[-1])
    out = {
        "q_proj.weight": q_new, "kv_a_proj_with_mqa.weight": torch.cat([latent_w, k_rope]),
        "kv_a_layernorm.weight": latent_rms.expand(rank).clone(), "kv_b_proj.weight": kv_b, "dense.weight": w.o.double(),
    }
    if latent_b is not None:
        out["kv_a_proj_with_mqa.bias"] = torch.cat([latent_b, k_rope_b])
    return {name: t.to(dt).contiguous() for name, t in out.items()}
