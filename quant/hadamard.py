"""Random Hadamard transform (RHT) along the last (contraction) axis.

On groups of d consecutive elements (d a power of two; 16 for NVFP4, 16 or 128 here):

    x' = x · diag(s) · H_d / √d

with H_d the Sylvester Hadamard matrix (H_1 = [1], H_2d = [[H, H], [H, -H]], so
H[i, j] = (-1)^popcount(i & j)) and s a ±1 vector drawn from a fixed seed. M = diag(s)·H_d/√d is
orthogonal, so applying the same transform to both operands of a GEMM cancels exactly:
(a·M)(b·M)ᵀ = a·M·Mᵀ·bᵀ = a·bᵀ; no inverse is ever applied. The last axis must be a multiple of d
(the GEMM pads both operands with zeros, which leaves a·bᵀ unchanged).
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=16)
def hadamard_matrix(d: int) -> torch.Tensor:
    """Sylvester H_d in float64 (entries ±1, H·Hᵀ = d·I)."""
    if d < 1 or d & (d - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {d}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


@lru_cache(maxsize=16)
def random_signs(d: int, seed: int) -> torch.Tensor:
    """The fixed ±1 vector s (float64), reproducible from `seed` on any device."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (d,), generator=gen, dtype=torch.int64).to(torch.float64) * 2 - 1


@lru_cache(maxsize=32)
def _rht_matrix(d: int, seed: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    m = random_signs(d, seed)[:, None] * hadamard_matrix(d) / d**0.5
    return m.to(device=device, dtype=dtype)


def rht_matrix(d: int, seed: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """M = diag(s)·H_d/√d, cached per (d, seed, device, dtype)."""
    return _rht_matrix(d, seed, str(device), dtype)


def rht(x: torch.Tensor, d: int, seed: int) -> torch.Tensor:
    """Apply the RHT to groups of d along the last axis of x (whose size must be a multiple of d)."""
    k = x.shape[-1]
    if k % d:
        raise ValueError(f"last axis {k} is not a multiple of the Hadamard size {d}")
    m = rht_matrix(d, seed, x.device, x.dtype)
    return (x.reshape(*x.shape[:-1], k // d, d) @ m).reshape(x.shape)
