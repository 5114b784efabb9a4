"""Rounding onto a 4-bit grid: round-to-nearest-even (RTN) and stochastic rounding (SR).

Inputs are already scaled into the grid's range (|x| ≤ qmax; callers clamp). Rounding acts on the
magnitude and restores the sign, so both modes are odd functions: Q(-x) = -Q(x).

For a magnitude a between neighbouring grid points lo ≤ a ≤ hi (codes i and i+1):
- RTN: the nearer point; on an exact tie (a = (lo+hi)/2) the point with the even code.
  The midpoint of two dyadic grid points is exact in binary floating point, so the tie test is exact.
- SR: hi with probability p = (a - lo)/(hi - lo), else lo. Then E[Q(a)] = lo + p(hi - lo) = a,
  i.e. SR is unbiased; its variance is p(1-p)(hi-lo)² ≤ (hi-lo)²/4.
"""

from __future__ import annotations

from typing import Literal

import torch

from kpop.quant.grids import Grid

Rounding = Literal["rtn", "sr"]


def _neighbours(mag: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower code i, lo = points[i], hi = points[i+1] with lo ≤ mag ≤ hi (i clamped to [0, n-2])."""
    idx = torch.searchsorted(points, mag.contiguous(), right=True) - 1
    idx = idx.clamp_(0, points.numel() - 2)
    return idx, points[idx], points[idx + 1]


def round_to_grid(
    x: torch.Tensor, grid: Grid, mode: Rounding = "rtn", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Round x (|x| ≤ grid.qmax) onto `grid`; returns grid values (not codes), same dtype as x."""
    points = grid.tensor(x.device, x.dtype)
    mag = x.abs().clamp_(max=grid.qmax)
    idx, lo, hi = _neighbours(mag, points)
    if mode == "rtn":
        mid = (lo + hi) * 0.5
        lower_code_odd = (idx % 2) == 1
        up = (mag > mid) | ((mag == mid) & lower_code_odd)
    elif mode == "sr":
        u = torch.rand(mag.shape, generator=generator, device=mag.device, dtype=mag.dtype)
        up = u < (mag - lo) / (hi - lo)
    else:
        raise ValueError(f"unknown rounding mode {mode!r}")
    return torch.where(up, hi, lo).copysign_(x)
