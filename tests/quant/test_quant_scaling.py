"""Block scaling against naive per-block references: E4M3 + FP32 (NVFP4), E8M0 (MXFP4), 2-D blocks,
and the SR headroom that keeps stochastic rounding unbiased when the E4M3 scale rounds down."""

from __future__ import annotations

import math

import pytest
import torch

from kpop.quant.grids import E2M1, INT4
from kpop.quant.scaling import BlockFormat, e4m3_round, fake_quantize, quantize


def e4m3_values() -> list[tuple[float, int]]:
    """Every finite non-negative E4M3 (fn) value with its mantissa field, from the bit layout."""
    out = []
    for e in range(16):
        for m in range(8):
            if e == 15 and m == 7:
                continue  # NaN
            v = (m / 8) * 2.0**-6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
            out.append((v, m))
    return out


def naive_e4m3(a: float) -> float:
    vals = e4m3_values()
    mag = min(abs(a), 448.0)
    best = min(vals, key=lambda vm: (abs(vm[0] - mag), vm[1] % 2))[0]
    return math.copysign(best, a)


def naive_rtn(a: float, points) -> float:
    best = min(range(len(points)), key=lambda i: (abs(points[i] - abs(a)), i % 2))
    return math.copysign(points[best], a)


def naive_nvfp4(x: torch.Tensor, grid, block: tuple[int, int]) -> torch.Tensor:
    """Element by element: s_t = amax/(448·q), s_b = e4m3((b/q)/s_t), v = clamp(x/(s_b·s_t)), round."""
    q = grid.qmax
    amax = float(x.abs().max())
    s_t = amax / (448 * q)
    out = torch.zeros_like(x)
    br, bc = block
    for r0 in range(0, x.shape[0], br):
        for c0 in range(0, x.shape[1], bc):
            blk = x[r0 : r0 + br, c0 : c0 + bc]
            s = naive_e4m3(float(blk.abs().max()) / q / s_t) * s_t
            for (i, j), v in zip(
                [(i, j) for i in range(blk.shape[0]) for j in range(blk.shape[1])], blk.flatten().tolist()
            ):
                if s > 0:
                    out[r0 + i, c0 + j] = naive_rtn(max(-q, min(q, v / s)), grid.points) * s
    return out


def test_e4m3_round_matches_the_bit_layout():
    gen = torch.Generator().manual_seed(0)
    vals = torch.tensor([v for v, _ in e4m3_values()], dtype=torch.float64)
    mids = (vals[1:] + vals[:-1]) / 2  # every tie
    rand = torch.exp(torch.rand(500, generator=gen, dtype=torch.float64) * 16 - 10)
    x = torch.cat([vals, mids, rand, torch.tensor([500.0, 1e-5])])
    got = e4m3_round(x)
    expected = torch.tensor([naive_e4m3(float(a)) for a in x], dtype=torch.float64)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("grid", [E2M1, INT4])
@pytest.mark.parametrize("shape,block", [((3, 40), (1, 16)), ((2, 64), (1, 32)), ((20, 24), (16, 16))])
def test_nvfp4_style_quantisation_matches_naive(grid, shape, block):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * torch.exp(torch.randn(shape, generator=gen, dtype=torch.float64))
    got = fake_quantize(x, grid, BlockFormat(block, "e4m3"))
    assert got.shape == x.shape
    assert torch.allclose(got, naive_nvfp4(x, grid, block), rtol=1e-12, atol=0)


def test_block_scale_and_tensor_scale_by_hand():
    # amax 12 → s_t = 12/(448·6); a block with max 3 → s_b = e4m3((3/6)/s_t) = e4m3(112) = 112
    x = torch.zeros(1, 32, dtype=torch.float64)
    x[0, 0], x[0, 16], x[0, 17] = 3.0, 12.0, 2.9
    q = quantize(x, E2M1, BlockFormat((1, 16), "e4m3"))
    assert q.tensor_scale.item() == pytest.approx(12 / (448 * 6))
    assert q.block_scales.flatten().tolist() == [112.0, 448.0]
    # 2.9/(12/6) = 1.45 → 1.5 on E2M1 → 3.0
    assert q.dequantize()[0, 17].item() == pytest.approx(3.0)


def test_two_d_blocks_quantise_w_and_wt_identically():
    w = torch.randn(48, 80, generator=torch.Generator().manual_seed(2))
    fmt = BlockFormat((16, 16), "e4m3")
    assert torch.equal(fake_quantize(w, E2M1, fmt).t(), fake_quantize(w.t().contiguous(), E2M1, fmt))
    # 1×16 blocks do not have this property
    fmt1 = BlockFormat((1, 16), "e4m3")
    assert not torch.equal(fake_quantize(w, E2M1, fmt1).t(), fake_quantize(w.t().contiguous(), E2M1, fmt1))


def test_e8m0_floor_rule_saturates_by_hand():
    # block max 7.9: ⌊log2 7.9⌋ = 2, ⌊log2 6⌋ = 2 → scale 2^0 = 1 → 7.9 clamps to 6 (saturation)
    x = torch.tensor([[7.9, 1.2, -0.3, 0.0] + [0.0] * 28])
    q = quantize(x, E2M1, BlockFormat((1, 32), "e8m0"))
    assert q.scales.item() == 1.0
    assert q.dequantize()[0, :3].tolist() == [6.0, 1.0, -0.5]
    # block max 0.1: ⌊log2 0.1⌋ = -4 → scale 2^-6; 0.1·64 = 6.4 → 6 → 0.09375
    y = torch.tensor([[0.1] + [0.0] * 31])
    assert quantize(y, E2M1, BlockFormat((1, 32), "e8m0")).scales.item() == 2.0**-6
    assert fake_quantize(y, E2M1, BlockFormat((1, 32), "e8m0"))[0, 0].item() == 6 * 2.0**-6


def test_zero_blocks_and_zero_tensor_dequantise_to_zero():
    x = torch.zeros(2, 32)
    x[1, 20] = 5.0
    out = fake_quantize(x, INT4, BlockFormat((1, 16), "e4m3"))
    assert torch.isfinite(out).all() and out[0].abs().sum() == 0 and out[1, :16].abs().sum() == 0
    assert torch.equal(fake_quantize(torch.zeros(4, 16), E2M1, BlockFormat()), torch.zeros(4, 16))


def _rounded_down_block() -> torch.Tensor:
    """Two blocks: block 0 sets amax = 1 (ratio 448); block 1's E4M3 scale argument is 8.45, which
    rounds down to 8, so without headroom its maximum saturates at qmax."""
    x = torch.zeros(1, 32, dtype=torch.float64)
    x[0, 0] = 1.0
    x[0, 16:20] = torch.tensor([8.45, 5.0, -3.3, 1.7], dtype=torch.float64) / 448
    return x


@pytest.mark.parametrize("grid", [E2M1, INT4])
def test_sr_headroom_makes_block_quantisation_unbiased(grid):
    """Mean of N SR draws vs x; per element the draw spread is ≤ one grid gap times the block scale,
    so 5·gap·s/(2√N) bounds the error of an unbiased quantiser (false failure < 1e-6)."""
    n = 20000
    x = _rounded_down_block()
    xs = x.expand(n, -1).contiguous()
    gen = torch.Generator().manual_seed(3)
    s = quantize(x, grid, BlockFormat((1, 16), "e4m3", 17 / 16)).scales[0, 1].item()
    bound = 5 * 2.0 * s / (2 * n**0.5)  # the widest gap of both grids is 2
    mean = fake_quantize(xs, grid, BlockFormat((1, 16), "e4m3", 17 / 16), "sr", gen).mean(0)
    assert torch.all((mean[16:20] - x[0, 16:20]).abs() <= bound)
    # without headroom the block maximum saturates and SR is biased low by ≈ 8/8.45 - 1 = -5.3%
    biased = fake_quantize(xs, grid, BlockFormat((1, 16), "e4m3", 1.0), "sr", gen).mean(0)
    assert biased[16].item() == pytest.approx(x[0, 16].item() * 8 / 8.45, rel=1e-6)
    assert x[0, 16].item() - biased[16].item() > 5 * bound
