"""Grids and rounding: exact ties, a naive nearest-point reference, unbiased stochastic rounding."""

from __future__ import annotations

import pytest
import torch

from kpop.quant.grids import E1M2, E2M1, INT4, get_grid
from kpop.quant.rounding import round_to_grid
from kpop.quant.scaling import BlockFormat, fake_quantize

# Every midpoint between neighbouring grid points, with its round-half-to-even result (by hand).
E2M1_TIES = {0.25: 0.0, 0.75: 1.0, 1.25: 1.0, 1.75: 2.0, 2.5: 2.0, 3.5: 4.0, 5.0: 4.0}
INT4_TIES = {0.5: 0.0, 1.5: 2.0, 2.5: 2.0, 3.5: 4.0, 4.5: 4.0, 5.5: 6.0, 6.5: 6.0}


def naive_rtn(a: float, points: tuple[float, ...]) -> float:
    """Nearest grid point by exhaustive search; ties to the even code (index)."""
    mag = min(abs(a), points[-1])
    best = min(range(len(points)), key=lambda i: (abs(points[i] - mag), i % 2))
    return points[best] if a >= 0 else -points[best]


def test_grids_have_the_documented_points():
    assert E2M1.points == (0, 0.5, 1, 1.5, 2, 3, 4, 6) and E2M1.qmax == 6
    assert INT4.points == tuple(range(8)) and INT4.qmax == 7
    assert get_grid("uniform") is INT4
    with pytest.raises(ValueError):
        get_grid("e3m0")


@pytest.mark.parametrize("grid,ties", [(E2M1, E2M1_TIES), (INT4, INT4_TIES)])
def test_rtn_every_tie_rounds_to_even(grid, ties):
    assert len(ties) == len(grid.points) - 1  # one tie per gap: none is missing
    x = torch.tensor(list(ties), dtype=torch.float32)
    expected = torch.tensor(list(ties.values()))
    assert torch.equal(round_to_grid(x, grid, "rtn"), expected)
    assert torch.equal(round_to_grid(-x, grid, "rtn"), -expected)


@pytest.mark.parametrize("grid", [E2M1, INT4, E1M2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rtn_matches_naive_nearest(grid, dtype):
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(2000, generator=gen) * 2 - 1) * grid.qmax * 1.1  # includes values past qmax
    grid_pts = torch.tensor(grid.points)
    ties = (grid_pts[1:] + grid_pts[:-1]) / 2
    x = torch.cat([x, grid_pts, -grid_pts, ties, -ties]).to(dtype)
    got = round_to_grid(x, grid, "rtn")
    expected = torch.tensor([naive_rtn(float(a), grid.points) for a in x], dtype=dtype)
    assert got.dtype == dtype
    assert torch.equal(got, expected)


@pytest.mark.parametrize("grid", [E2M1, INT4])
def test_sr_is_unbiased_within_five_sigma(grid):
    """E[SR(a)] = a. Each draw lies in {lo, hi}, so its variance is ≤ (hi-lo)²/4 and the mean of N
    draws has standard deviation ≤ (hi-lo)/(2√N). We require |mean - a| ≤ 5 of those: a false
    failure has probability < 6e-7 per value (normal approximation), < 1e-4 for all values here."""
    n = 20000
    gen = torch.Generator().manual_seed(2)
    pts = torch.tensor(grid.points, dtype=torch.float64)
    lo, hi = pts[:-1], pts[1:]
    fractions = torch.tensor([0.1, 0.25, 0.5, 0.8, 0.97], dtype=torch.float64)
    a = (lo[:, None] + fractions[None, :] * (hi - lo)[:, None]).flatten()
    width = (hi - lo)[:, None].expand(-1, len(fractions)).flatten()
    signs = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat_interleave(a.numel())
    a, width = torch.cat([a, a]) * signs, torch.cat([width, width])
    draws = round_to_grid(a[:, None].expand(-1, n).contiguous(), grid, "sr", gen)
    bound = 5 * width / (2 * n**0.5)
    assert torch.all((draws.mean(1) - a).abs() <= bound)
    # each draw is one of the two neighbours, and both occur
    assert torch.all((draws.abs() - a.abs()[:, None]).abs() <= width[:, None] + 1e-12)
    assert torch.all((draws != draws[:, :1]).any(1))


def test_sr_keeps_grid_points_and_rtn_is_deterministic():
    gen = torch.Generator().manual_seed(3)
    pts = torch.tensor(E2M1.points)
    x = torch.cat([pts, -pts]).repeat(100)
    assert torch.equal(round_to_grid(x, E2M1, "sr", gen), x)
    y = torch.full((5000,), 2.3)
    assert torch.equal(round_to_grid(y, E2M1, "rtn"), torch.full_like(y, 2.0))


def test_e1m2_and_int4_are_one_grid_under_absmax_scaling():
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(4))
    fmt = BlockFormat((1, 16), "e4m3")
    assert torch.equal(fake_quantize(x, E1M2, fmt), fake_quantize(x, INT4, fmt))
