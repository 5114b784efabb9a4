"""One quantised GEMM  lhs·rhsᵀ, both operands quantised along their last (contraction) axis.

    qgemm(a, b, spec) = Q_lhs(a·M) · Q_rhs(b·M)ᵀ,    M = diag(s)·H_d/√d if spec.rht = d, else I.

Both operands are zero-padded along the contraction axis to a common multiple of the RHT size and
the block widths (zeros change neither a·bᵀ nor any block maximum). With quantisation off, the
orthogonal M cancels and the result is a·bᵀ up to rounding in the compute dtype.

`trace()` instruments every operand quantisation: each event records which GEMM and operand, the
spec and RHT size actually used, and optionally the operand before and after quantisation. Tests
use it to check a recipe's placement inside the autograd Function. `gemm_counts()` counts, per
process, the GEMMs run with at least one quantised operand, by GEMM (fprop, dgrad, wgrad): the
learner reports the difference over each step, so a run's records show the 4-bit GEMMs it ran.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kpop.quant.grids import get_grid
from kpop.quant.hadamard import rht as apply_rht
from kpop.quant.recipe import OPERAND_NAMES, GemmSpec, OperandSpec
from kpop.quant.scaling import Quantized, quantize


@dataclass
class TraceEvent:
    gemm: str
    role: str  # "lhs" or "rhs"
    operand: str  # "x", "w" or "dy"
    spec: OperandSpec
    rht: int | None
    shape: tuple[int, ...]
    before: torch.Tensor | None = None  # after RHT, before quantisation
    after: torch.Tensor | None = None  # dequantised


_trace: list[TraceEvent] | None = None
_keep_tensors = False
_counts: Counter[str] = Counter()


def gemm_counts() -> dict[str, int]:
    """GEMMs run so far in this process with a quantised operand, by GEMM name."""
    return dict(_counts)


@contextmanager
def trace(keep_tensors: bool = False) -> Iterator[list[TraceEvent]]:
    """Record a TraceEvent for every operand that passes through qgemm inside the block."""
    global _trace, _keep_tensors
    saved = (_trace, _keep_tensors)
    _trace, _keep_tensors = [], keep_tensors
    try:
        yield _trace
    finally:
        _trace, _keep_tensors = saved


def _operand(t: torch.Tensor, spec: OperandSpec, gemm: str, role: str, rht: int | None) -> Quantized | torch.Tensor:
    q = quantize(t, get_grid(spec.grid), spec.fmt, spec.rounding) if spec.quantised else t
    if _trace is not None:
        name = OPERAND_NAMES[gemm][0 if role == "lhs" else 1]
        event = TraceEvent(gemm, role, name, spec, rht, tuple(t.shape))
        if _keep_tensors:
            event.before = t.detach().clone()
            event.after = (q.dequantize() if isinstance(q, Quantized) else q).detach().clone()
        _trace.append(event)
    return q


def _contraction_multiple(spec: GemmSpec) -> int:
    mult = spec.rht or 1
    for op in (spec.lhs, spec.rhs):
        if op.quantised:
            mult = math.lcm(mult, op.fmt.block[1])
    return mult


def qgemm(a: torch.Tensor, b: torch.Tensor, spec: GemmSpec, gemm: str, seed: int = 0, fp8: bool = False) -> torch.Tensor:
    """lhs·rhsᵀ for 2-D a (m×k), b (n×k) under `spec`; returns m×n in a's dtype."""
    pad = (-a.shape[1]) % _contraction_multiple(spec)
    if pad:
        a, b = F.pad(a, (0, pad)), F.pad(b, (0, pad))
    if spec.rht:
        a, b = apply_rht(a, spec.rht, seed), apply_rht(b, spec.rht, seed)
    qa = _operand(a, spec.lhs, gemm, "lhs", spec.rht)
    qb = _operand(b, spec.rhs, gemm, "rhs", spec.rht)
    if spec.lhs.quantised or spec.rhs.quantised:
        _counts[gemm] += 1
    both = isinstance(qa, Quantized) and isinstance(qb, Quantized)
    if fp8 and both and a.is_cuda:
        from kpop.quant.fp8_gemm import fp8_block_gemm

        return fp8_block_gemm(qa, qb).to(a.dtype)
    da = qa.dequantize() if isinstance(qa, Quantized) else qa
    db = qb.dequantize() if isinstance(qb, Quantized) else qb
    return da @ db.t()
