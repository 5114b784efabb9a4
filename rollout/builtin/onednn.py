"""Decode-time linears on oneDNN with prepacked weights.

Why: oneDNN's inner product over a weight reordered once into its blocked layout beats the BLAS
calls for the few-row products of a decode step. Measured on the 2-core box (fp32, cold weights,
30 distinct 2304x768 weights, microseconds per call, oneDNN / the blocked `bmm` of
kpop.rollout.builtin.matmul): 4 rows 209 / 286, 16 rows 366 / 665, 21 rows 431 / 1135, 64 rows
1101 / 1472; at 1 row it loses (261 / 189), so one-row fp32 products stay on the blocked `bmm`.
bf16 (AVX512-BF16): 152 / 275 (F.linear) at 1 row, 220 / 404 at 16, 595 / 794 at 64.

Contract: `linear(owner, key, params, weight, bias, x)` = `F.linear(x, weight, bias)` up to the
summation order inside each dot product. `weight` is the tensor `params` make up (one parameter, or
the packed whole of several, kpop.rollout.builtin.packed). Its reordered copy is cached on `owner`
under `key` with the data pointer and version counter of every one of `params`: an in-place update
of any of them (`WeightLoader.commit` copies into the parameters, which bumps their versions) or new
storage makes the copy rebuilt at the next call, so a decode step always uses the current values.
Cost: one more copy of each weight that goes through here (the parameters stay the model's own).
`available()` says whether this torch build has the oneDNN ops (x86 builds do).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import torch

BATCH_HINT = 16  # the row count oneDNN blocks the weight for; 1, 16 and 64 timed alike at 4-64 rows


@cache
def available() -> bool:
    try:
        w = torch.ops.mkldnn._reorder_linear_weight(torch.ones(8, 8), BATCH_HINT)
        torch.ops.mkldnn._linear_pointwise(torch.ones(2, 8), w, None, "none", [], "")
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


def _state(params: Sequence[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    return tuple((p.data_ptr(), p._version) for p in params)


def prepacked(owner: object, key: str, params: Sequence[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    cache_: dict = owner.__dict__.setdefault("_kpop_onednn", {})
    state = _state(params)
    hit = cache_.get(key)
    if hit is not None and hit[1] == state:
        return hit[0]
    with torch.inference_mode(False), torch.no_grad():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), BATCH_HINT)
    cache_[key] = (packed, state)
    return packed


def linear(owner: object, key: str, params: Sequence[torch.Tensor], weight: torch.Tensor,
           bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    packed = prepacked(owner, key, params, weight)
    y = packed_linear(x.reshape(-1, x.shape[-1]), packed, bias)
    return y.view(*x.shape[:-1], weight.shape[0])


def packed_linear(rows: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """rows [n, in] by a `prepacked` copy (no check that it is current: `linear` checks)."""
    return torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")
