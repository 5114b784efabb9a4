"""Decode-time linear layers that use every core: `linear(x, w, b)` computes `F.linear(x, w, b)`.

Why: a decode step multiplies a few rows by each weight, and for those shapes `F.linear` makes one
BLAS call that runs on one thread. Measured on the 2-core box (medium Llama shapes, 12 layers of
distinct weights, fp32): at 1 row the weights stream at ~11 GB/s on 1 or 2 threads alike, where a
plain read runs at ~28 GB/s; at 64 rows ~85-110 GFLOP/s. Splitting the weight's output rows into
`CHUNKS` blocks and multiplying them by one `bmm` gives each thread its own blocks: ~29 GB/s at 1
row, ~130 GFLOP/s at 64 (benchmarks/engine_limits.py times both forms; the limit takes the faster).

Contract: `linear(x [..., in], w [out, in], b [out] | None)` -> [..., out], each output element the
dot product of its weight row with its input row (the summation order inside a dot product is the
BLAS kernel's, so values match `F.linear` to rounding, not bit for bit). The chunked form is used
for float32 weights of at least `MIN_NUMEL` elements (1 MiB) whose output size divides into
`CHUNKS`; smaller weights sit in a core's cache, where the `bmm`'s fixed cost loses (192x64: 3.7x
slower at 1 row; 768x256 even; 768x768 0.74x the time at 64 rows), and other dtypes go to `F.linear`
(bf16 `bmm` was no faster). `module_linear(m, x)` applies an `nn.Linear` this way and calls any
other module; `project` is `linear` for a model's own weights, picking oneDNN over prepacked
weights (kpop.rollout.builtin.onednn) where that measured faster: several fp32 rows, or bf16.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kpop.rollout.builtin import onednn

CHUNKS = 4
MIN_NUMEL = 2**18


def chunked(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, chunks: int = CHUNKS) -> torch.Tensor:
    """`F.linear` as one `bmm` over `chunks` row blocks of `w` (requires out % chunks == 0)."""
    out, fan_in = w.shape
    rows = x.reshape(-1, fan_in)
    y = torch.bmm(w.view(chunks, out // chunks, fan_in), rows.t().expand(chunks, fan_in, rows.shape[0]))
    y = y.view(out, rows.shape[0]).t()
    if b is not None:
        y = y + b
    return y.reshape(*x.shape[:-1], out)


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    if w.dtype == torch.float32 and w.numel() >= MIN_NUMEL and w.shape[0] % CHUNKS == 0 and w.is_contiguous() and x.device.type == "cpu":
        return chunked(x, w, b)
    return F.linear(x, w, b)


def project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, owner: object, key: str,
            params: Sequence[torch.Tensor]) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for a model's own weight (`params` make it up; `owner`/`key`
    name its cache): oneDNN over a prepacked copy (kpop.rollout.builtin.onednn) for weights of at
    least `MIN_NUMEL` on the CPU, float32 with 2+ rows or bfloat16; `linear` otherwise."""
    if on_onednn(weight, x):
        return onednn.linear(owner, key, params, weight, bias, x)
    return linear(x, weight, bias)


def on_onednn(weight: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether `project` multiplies x by `weight` through oneDNN."""
    return (
        weight.numel() >= MIN_NUMEL and x.device.type == "cpu" and weight.is_contiguous()
        and (weight.dtype == torch.bfloat16 or (weight.dtype == torch.float32 and x.numel() > x.shape[-1]))
        and onednn.available()
    )


def module_linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if type(module) is nn.Linear:
        return project(x, module.weight, module.bias, module, "weight", (module.weight,))
    return module(x)
