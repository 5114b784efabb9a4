"""Block-scaled quantisation of a 2-D operand whose last axis is the GEMM contraction axis.

Blocks: (1, 16) and (1, 32) run along the contraction axis; (16, 16) tiles are two-dimensional
(weights in the NVFP4 recipe: W and Wᵀ then quantise identically). Axes are zero-padded up to a
block multiple; zeros change no block maximum and are cropped afterwards.

Scales, with q = grid.qmax and b = a block's absolute maximum:
- "e4m3" (NVFP4): one FP32 tensor scale  s_t = amax / (448·q)  (1 if amax = 0) and per block
      s_b = e4m3( h · (b / q) / s_t ),   h = headroom ≥ 1, the argument clamped to 448,
  effective scale s = s_b · s_t. E4M3 rounding may round s_b down, so |x/s| can exceed q and the
  block maximum saturates; with SR that makes rounding biased. h = 17/16 removes it: E4M3 rounding
  has relative error ≤ 1/17 at the points where it rounds down, so s_b ≥ b/(q·s_t).
- "e8m0" (MXFP4, OCP MX): s = 2^(⌊log2 b⌋ - ⌊log2 q⌋), a power of two. This floor rule maps b into
  [2^⌊log2 q⌋, 2^(⌊log2 q⌋+1)), which exceeds q (6 for E2M1, 7 for INT4): the top saturates.

Elements: v = clamp(x / s, ±q), code = round(v) on the grid, dequantised value = code · s.
Blocks whose scale is 0 (all-zero, or an E4M3 underflow) dequantise to 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from kpop.quant.grids import Grid
from kpop.quant.rounding import Rounding, round_to_grid

ScaleKind = Literal["e4m3", "e8m0"]
E4M3_MAX = 448.0


@dataclass(frozen=True)
class BlockFormat:
    block: tuple[int, int] = (1, 16)
    scale: ScaleKind = "e4m3"
    headroom: float = 1.0


@dataclass(frozen=True)
class Quantized:
    """codes: grid values (padded shape); scales: effective FP32 scale per block (block grid);
    block_scales / tensor_scale: its E4M3 (or E8M0) and FP32 factors; shape: the unpadded shape."""

    codes: torch.Tensor
    scales: torch.Tensor
    block_scales: torch.Tensor
    tensor_scale: torch.Tensor
    block: tuple[int, int]
    shape: tuple[int, int]

    def dequantize(self) -> torch.Tensor:
        br, bc = self.block
        rows, cols = self.codes.shape
        view = self.codes.view(rows // br, br, cols // bc, bc) * self.scales[:, None, :, None]
        return view.reshape(rows, cols)[: self.shape[0], : self.shape[1]]


def e4m3_round(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest FP8 E4M3 value (ties to even), saturating at ±448; keeps x's dtype."""
    return x.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).to(x.dtype)


def _pad_to(x: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    pr = (-x.shape[0]) % block[0]
    pc = (-x.shape[1]) % block[1]
    return F.pad(x, (0, pc, 0, pr)) if pr or pc else x


def block_scales(amax_blocks: torch.Tensor, amax: torch.Tensor, grid: Grid, fmt: BlockFormat):
    """(effective scale, block-scale factor, tensor scale) per block from the block maxima."""
    q = grid.qmax
    if fmt.scale == "e4m3":
        s_t = torch.where(amax > 0, amax / (E4M3_MAX * q), torch.ones_like(amax))
        s_b = e4m3_round(fmt.headroom * (amax_blocks / q) / s_t)
        return s_b * s_t, s_b, s_t
    if fmt.scale == "e8m0":
        _, exp = torch.frexp(amax_blocks)  # amax = m·2^exp, m ∈ [0.5, 1): ⌊log2 amax⌋ = exp - 1
        emax_elem = torch.frexp(torch.tensor(q, dtype=amax_blocks.dtype))[1] - 1
        e = (exp - 1 - emax_elem).clamp(-127, 127)
        s = torch.where(amax_blocks > 0, torch.ldexp(torch.ones_like(amax_blocks), e), torch.zeros_like(amax_blocks))
        return s, s, torch.ones_like(amax)
    raise ValueError(f"unknown scale kind {fmt.scale!r}")


def quantize(
    x: torch.Tensor, grid: Grid, fmt: BlockFormat, rounding: Rounding = "rtn", generator: torch.Generator | None = None
) -> Quantized:
    """Block-quantise a 2-D tensor (contraction axis last); see the module docstring."""
    if x.dim() != 2:
        raise ValueError(f"quantize expects a 2-D operand, got shape {tuple(x.shape)}")
    br, bc = fmt.block
    xp = _pad_to(x, fmt.block)
    rows, cols = xp.shape
    view = xp.view(rows // br, br, cols // bc, bc)
    amax_blocks = view.abs().amax(dim=(1, 3))
    scales, s_b, s_t = block_scales(amax_blocks, x.abs().amax(), grid, fmt)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))[:, None, :, None]
    v = (view / safe).clamp(-grid.qmax, grid.qmax)
    codes = round_to_grid(v, grid, rounding, generator)
    codes = torch.where(scales[:, None, :, None] > 0, codes, torch.zeros_like(codes))
    return Quantized(codes.reshape(rows, cols), scales, s_b, s_t, fmt.block, (x.shape[0], x.shape[1]))


def fake_quantize(
    x: torch.Tensor, grid: Grid, fmt: BlockFormat, rounding: Rounding = "rtn", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Quantise and dequantise: the CPU emulation of an FP4 operand."""
    return quantize(x, grid, fmt, rounding, generator).dequantize()
