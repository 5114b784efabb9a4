"""Shrinkage metrics of a quantiser Q on data x (sums over all elements):

    relative MSE   = Σ(Q(x) - x)² / Σx²
    gain error GS  = Σ(Q(x) - x)·x / Σx² = β - 1,    β = ⟨Q(x), x⟩ / ⟨x, x⟩
    signed error SB = mean((Q(x) - x)·sign(x)) / mean|x|

GS is the multiplicative error that compounds through layers (≈ β^L after L GEMMs); SB is
dominated by values rounding to zero. `ErrorSums` accumulates the sums so that statistics can be
pooled over many tensors (all layers of a model) before dividing. `gain_se` is the standard error
of GS treating elements as independent, sqrt(Σ((Q(x) - x)·x)²) / Σx²: the noise floor below which
a measured gain error is indistinguishable from zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class ErrorStats:
    rel_mse: float
    gain_error: float
    signed_error: float
    gain_se: float
    n: int

    @property
    def beta(self) -> float:
        return 1.0 + self.gain_error

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ErrorSums:
    sq_err: float = 0.0
    err_dot_x: float = 0.0
    sq_err_x: float = 0.0
    sq_x: float = 0.0
    err_sign: float = 0.0
    abs_x: float = 0.0
    n: int = 0

    def add(self, q: torch.Tensor, x: torch.Tensor) -> ErrorSums:
        q, x = q.double(), x.double()
        e = q - x
        self.sq_err += float((e * e).sum())
        self.err_dot_x += float((e * x).sum())
        self.sq_err_x += float((e * x).square().sum())
        self.sq_x += float((x * x).sum())
        self.err_sign += float((e * x.sign()).sum())
        self.abs_x += float(x.abs().sum())
        self.n += x.numel()
        return self

    def stats(self) -> ErrorStats:
        if self.sq_x == 0:
            raise ValueError("no signal: Σx² = 0")
        return ErrorStats(
            self.sq_err / self.sq_x,
            self.err_dot_x / self.sq_x,
            self.err_sign / self.abs_x,
            self.sq_err_x**0.5 / self.sq_x,
            self.n,
        )


def error_stats(q: torch.Tensor, x: torch.Tensor) -> ErrorStats:
    return ErrorSums().add(q, x).stats()
