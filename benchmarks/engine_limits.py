"""The machine's decode limits for a model, measured here: what `benchmarks/engine.py` compares to.

- Batch 1 (bandwidth-bound): a token reads every weight it uses once, so the limit is
  `read bandwidth / weight bytes per token`. Bandwidth: the best of several `sum()` passes over a
  256 MiB buffer (a pure streaming read). Weight bytes: every linear layer's weight (the lm_head
  included, the embedding table not: a token reads one row of it), routed MoE experts counted
  top-k of E.
- Batch B > 1 (compute-bound): the time of one decode step's matmuls, each timed here on its own
  shape, [rows, in] x [in, out] in the model's dtype, the faster of `F.linear` and the row-chunked
  `bmm` the built-in engine uses (kpop.rollout.builtin.matmul.chunked; no engine is measured
  against a limit its own kernel beats); rows = B for dense layers and
  B*k/E (rounded up) for each of the min(E, B*k) routed experts that a balanced router feeds.
  The limit is B / that time. FLOPs counted: 2 x rows x in x out per linear.
Attention over the cache (<= 72 tokens in the benchmark, ~2% of the weight traffic) and the
router, norms and sampling are left out: the limits are upper bounds the engine cannot reach.
Timings take the best of several runs, so a noisy machine yields optimistic (high) limits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Linear:
    fan_in: int
    fan_out: int
    experts: int = 1  # a routed expert's layer: one of `experts`, `top_k` of which each token uses
    top_k: int = 1

    @property
    def rows_per_token(self) -> float:
        return self.top_k / self.experts

    def fed(self, batch: int) -> tuple[float, int]:
        """(share of this layer's experts a balanced router feeds at `batch`, rows each gets)."""
        fed = min(self.experts, batch * self.top_k)
        return fed / self.experts, math.ceil(batch * self.top_k / fed)


def model_linears(model) -> list[Linear]:
    """The decode-time linear layers of `model` (MTP layers of the hybrid excluded: unused when decoding)."""
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    experts, top_k = getattr(cfg, "num_experts", None) or 1, getattr(cfg, "num_experts_per_tok", None) or 1
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        parts = name.split(".")
        if "layers" in parts and int(parts[parts.index("layers") + 1]) >= n_layers:
            continue
        routed = ".experts." in name
        out.append(Linear(module.in_features, module.out_features, *((experts, top_k) if routed else (1, 1))))
    return out


def weight_bytes_per_token(linears: list[Linear], dtype: torch.dtype) -> float:
    size = torch.empty((), dtype=dtype).element_size()
    return sum(lin.rows_per_token * lin.fan_in * lin.fan_out * size for lin in linears)


def read_bandwidth(mib: int = 128, repeats: int = 30) -> float:
    """Bytes per second of a streaming read (best of `repeats`: short passes, so that on a shared
    machine some of them run undisturbed)."""
    buf = torch.ones(mib * 2**20 // 4)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - start)
    return buf.nbytes / best


def _linear_time(rows: int, fan_in: int, fan_out: int, dtype: torch.dtype, repeats: int = 40) -> float:
    """Best single-call time of the faster form: single calls, so that on a shared machine some run
    undisturbed; the two forms take turns."""
    from kpop.rollout.builtin.matmul import CHUNKS, chunked

    x, w = torch.randn(rows, fan_in).to(dtype), torch.randn(fan_out, fan_in).to(dtype)
    forms = [F.linear] + ([chunked] if fan_out % CHUNKS == 0 else [])
    best = float("inf")
    for form in forms:
        form(x, w)
    for _ in range(repeats):
        for form in forms:
            start = time.perf_counter()
            form(x, w)
            best = min(best, time.perf_counter() - start)
    return best


def step_matmul(linears: list[Linear], batch: int, dtype: torch.dtype) -> tuple[float, float]:
    """(seconds, FLOPs) of one decode step's matmuls at `batch` rows, each shape timed here."""
    times: dict[tuple[int, int, int], float] = {}
    seconds = flops = 0.0
    for lin in linears:
        share, rows = lin.fed(batch)
        key = (rows, lin.fan_in, lin.fan_out)
        if key not in times:
            times[key] = _linear_time(*key, dtype)
        seconds += share * times[key]
        flops += share * 2 * rows * lin.fan_in * lin.fan_out
    return seconds, flops


@dataclass(frozen=True)
class Limits:
    bandwidth: float          # bytes/s
    bytes_per_token: float
    step_s: dict[int, float]  # batch -> seconds of matmuls per decode step
    step_flops: dict[int, float]

    def tokens_per_s(self, batch: int) -> float:
        if batch == 1:
            return self.bandwidth / self.bytes_per_token
        return batch / self.step_s[batch]

    def describe(self, batch: int) -> str:
        if batch == 1:
            return f"{self.bytes_per_token / 1e6:.0f} MB/token at {self.bandwidth / 1e9:.1f} GB/s"
        return f"{self.step_flops[batch] / 1e9:.2f} GFLOP/step at {self.step_flops[batch] / self.step_s[batch] / 1e9:.0f} GFLOP/s"


def measure_limits(model, batches: list[int], dtype: torch.dtype, bandwidth: float) -> Limits:
    linears = model_linears(model)
    step_s, step_flops = {}, {}
    for b in batches:
        if b > 1:
            step_s[b], step_flops[b] = step_matmul(linears, b, dtype)
    return Limits(bandwidth, weight_bytes_per_token(linears, dtype), step_s, step_flops)
