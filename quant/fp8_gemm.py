"""Exact block-scaled 4-bit GEMM on FP8 tensor cores (CUDA, Hopper or newer).

Every 4-bit code is exact in FP8 E4M3: INT4 codes 0..7 and E2M1 codes 0, .5, ..., 6. So for
lhs codes A (M×K), rhs codes B (N×K) and per-16-chunk scales a_s (M×K/16), b_s (N×K/16):

    Y = Σ_k  (A_k · B_kᵀ) ⊙ (a_s[:, k] ⊗ b_s[:, k]),     A_k, B_k the k-th 16-column chunk.

Each chunk product is one `torch._scaled_mm` in E4M3 with unit tensor scales and FP32 output. Its
sum of 16 products is a small dyadic rational (|sum| ≤ 16·7·7 = 784 for INT4, multiples of 1/4 up
to 576 for E2M1) and is therefore exact even under the tensor cores' reduced-precision
accumulation; the block scales are applied in FP32 outside. The result equals the CPU emulation
dequant(A)·dequant(B)ᵀ up to FP32 summation order. One matmul per chunk makes this a correctness
path, not a fast kernel; no public PyTorch op takes 1×16 block scales for FP8 on Hopper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kpop.quant.scaling import Quantized

CHUNK = 16


def chunk_scales(q: Quantized) -> torch.Tensor:
    """Per-row, per-16-column-chunk scales (rows × K/16) of a quantised operand."""
    br, bc = q.block
    if bc % CHUNK:
        raise ValueError(f"block width {bc} is not a multiple of {CHUNK}")
    s = q.scales.repeat_interleave(br, dim=0).repeat_interleave(bc // CHUNK, dim=1)
    return s[: q.shape[0]]


def _pad_rows(x: torch.Tensor, mult: int) -> torch.Tensor:
    pad = (-x.shape[0]) % mult
    return F.pad(x, (0, 0, 0, pad)) if pad else x


def fp8_block_gemm(a: Quantized, b: Quantized) -> torch.Tensor:
    """Y = dequant(a)·dequant(b)ᵀ (FP32) computed chunk by chunk on FP8 tensor cores."""
    if not a.codes.is_cuda:
        raise RuntimeError("fp8_block_gemm needs CUDA tensors")
    m, n = a.shape[0], b.shape[0]
    a_codes = _pad_rows(a.codes[:m], CHUNK).to(torch.float8_e4m3fn)
    b_codes = _pad_rows(b.codes[:n], CHUNK).to(torch.float8_e4m3fn)
    a_s, b_s = _pad_rows(chunk_scales(a).float(), CHUNK), _pad_rows(chunk_scales(b).float(), CHUNK)
    if a_codes.shape[1] != b_codes.shape[1]:
        raise ValueError("operands disagree on the padded contraction length")
    one = torch.ones((), device=a_codes.device, dtype=torch.float32)
    y = torch.zeros(a_codes.shape[0], b_codes.shape[0], device=a_codes.device, dtype=torch.float32)
    for k in range(a_codes.shape[1] // CHUNK):
        cols = slice(k * CHUNK, (k + 1) * CHUNK)
        part = torch._scaled_mm(
            a_codes[:, cols].contiguous(),
            b_codes[:, cols].contiguous().t(),  # column-major rhs, as _scaled_mm requires
            scale_a=one,
            scale_b=one,
            out_dtype=torch.float32,
        )
        y += part * a_s[:, k, None] * b_s[None, :, k]
    return y[:m, :n]
