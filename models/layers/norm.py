"""RMSNorm and group RMSNorm (normalise each of G equal slices of the last dim separately).

    rms_norm(x) = w * x / sqrt(mean(x^2) + eps)     (statistics in float32, output in x's dtype)

Parameter name `weight` matches the public BailingMoeV2_5 checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class GroupRMSNorm(nn.Module):
    def __init__(self, size: int, groups: int, eps: float = 1e-6) -> None:
        super().__init__()
        if size % groups:
            raise ValueError(f"size {size} is not divisible by group_norm_size {groups}")
        self.weight = nn.Parameter(torch.ones(size))
        self.groups = groups
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xf = x.float().reshape(*shape[:-1], self.groups, shape[-1] // self.groups)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.reshape(shape).to(x.dtype)
