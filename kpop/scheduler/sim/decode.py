"""An engine's decode speed as a function of how many sequences it decodes at once.

One decode step of a batch of b sequences takes

    tau(b) = base_s + per_seq_s * b          (seconds; every sequence gains one token)

so throughput is b / tau(b) tokens/s: linear in b while the fixed per-step cost dominates,
saturating at 1 / per_seq_s. `fit` takes measured (batch, tokens/s) pairs, as
benchmarks/engine.py prints them, and fits tau by least squares on the relative error
(weights 1 / tau^2, so the batch-1 and batch-64 points count alike).

`request_s`: what each request costs the engine besides decoding (prefill of its new context,
scheduling and handing the result back), as serial time: for request_s seconds after a request
arrives the engine decodes nothing, and arrivals queue these stalls. A migrated request pays it
again (its prefix is prefilled on the new engine).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodeCurve:
    base_s: float
    per_seq_s: float
    request_s: float = 0.0

    def step_s(self, batch: int) -> float:
        return self.base_s + self.per_seq_s * batch

    def tokens_per_s(self, batch: int) -> float:
        return batch / self.step_s(batch)

    @classmethod
    def fit(cls, points: tuple[tuple[int, float], ...], request_s: float = 0.0) -> DecodeCurve:
        if len(points) < 2:
            raise ValueError("fitting tau(b) = a + c b needs at least two (batch, tokens/s) points")
        rows = [(float(b), b / tps, (tps / b) ** 2) for b, tps in points]  # (b, tau, weight 1/tau^2)
        sw = sum(w for _, _, w in rows)
        sb = sum(w * b for b, _, w in rows)
        st = sum(w * t for _, t, w in rows)
        sbb = sum(w * b * b for b, _, w in rows)
        sbt = sum(w * b * t for b, t, w in rows)
        det = sw * sbb - sb * sb
        if det <= 0:
            raise ValueError("fitting tau(b) needs at least two distinct batch sizes")
        per_seq = (sw * sbt - sb * st) / det
        return cls(base_s=(st - per_seq * sb) / sw, per_seq_s=per_seq, request_s=request_s)
