"""RMSNorm for the decode paths in one fused op instead of the modules' six.

`rms(norm, x)` = `F.rms_norm(x) * norm.weight`: the statistics in float32 inside the fused kernel,
the normalised value rounded to x's dtype, then scaled by the weight -- the same order of
operations, and so the same values, as the modules it stands in for (kpop.models.layers.norm's
`RMSNorm`, transformers' `LlamaRMSNorm` and the like: `weight * normalised.to(dtype)`).
`group_rms` does the same per group (`GroupRMSNorm`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _eps(norm) -> float:
    eps = getattr(norm, "eps", None)
    return norm.variance_epsilon if eps is None else eps


def rms(norm, x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), None, _eps(norm)) * norm.weight


def group_rms(norm, x: torch.Tensor) -> torch.Tensor:
    shape = x.shape
    grouped = x.reshape(*shape[:-1], norm.groups, shape[-1] // norm.groups)
    return F.rms_norm(grouped, (grouped.shape[-1],), None, norm.eps).reshape(shape) * norm.weight
