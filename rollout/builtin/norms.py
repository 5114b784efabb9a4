"""RMSNorm for the decode paths in one fused op instead of the modules' six.

`rms(norm, x)` = `F.rms_norm(x) * norm.weight`: the statistics in float32 inside the fused kernel,
the normalised value rounded to x's dtype, then scaled by the weight -- the same order of
operations, and so the same values, as the modules it stands in for (kpop.models.layers.norm's
`RMSNorm`, transformers' `LlamaRMSNorm` and the like: `weight * normalised.to(dtype)`). float32
and bfloat16 rows go to the native kernel (kpop.rollout.builtin.native) where it is built: one
call instead of `F.rms_norm`'s composite of six ops (64 bf16 rows of 768: ~90 us), the same values
to float32 rounding.
`group_rms` does the same per group (`GroupRMSNorm`), on torch's ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kpop.rollout.builtin import native


def eps_of(norm) -> float:
    eps = getattr(norm, "eps", None)
    return norm.variance_epsilon if eps is None else eps


def rms(norm, x: torch.Tensor) -> torch.Tensor:
    if native.fits(x, norm.weight, dtype=x.dtype) and norm.weight.numel() == x.shape[-1]:
        return native.rms_norm(x, norm.weight, eps_of(norm))
    return F.rms_norm(x, (x.shape[-1],), None, eps_of(norm)) * norm.weight


def group_rms(norm, x: torch.Tensor) -> torch.Tensor:
    shape = x.shape
    grouped = x.reshape(*shape[:-1], norm.groups, shape[-1] // norm.groups)
    return F.rms_norm(grouped, (grouped.shape[-1],), None, norm.eps).reshape(shape) * norm.weight
