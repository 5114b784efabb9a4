"""Rotary position embeddings, in the two layouts the BailingMoeV2_5 format uses.

* Lightning layers: "neox" (rotate-half) layout on the first `rot` dims of each head, the rest
  passes through (partial RoPE, `rot = head_dim * partial_rotary_factor`). Matches HF
  `apply_rotary_pos_emb` and vLLM `get_rope(is_neox_style=True)`.
* MLA layers: interleaved (GPT-J) layout on the whole `qk_rope_head_dim` (pairs (2i, 2i+1)), as vLLM
  `get_rope(is_neox_style=False)`; HF's `rope_interleave=True` path computes the same scores.

Frequencies: inv_freq_i = theta^(-2i/rot). Angles are computed in float32.
"""

from __future__ import annotations

import torch


def rope_angles(positions: torch.Tensor, rot: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [*positions.shape, rot/2]."""
    inv_freq = theta ** (-torch.arange(0, rot, 2, device=positions.device, dtype=torch.float32) / rot)
    angles = positions.float()[..., None] * inv_freq
    return angles.cos(), angles.sin()


def apply_neox_partial(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D]; cos/sin [B, T, rot/2] -> rotate the first rot dims in rotate-half layout."""
    half = cos.shape[-1]
    cos, sin = cos[:, :, None].to(torch.float32), sin[:, :, None].to(torch.float32)
    xf = x.float()
    x1, x2, rest = xf[..., :half], xf[..., half : 2 * half], xf[..., 2 * half :]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)
    return out.to(x.dtype)


def apply_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, R] (or [B, T, R] with cos/sin broadcast); rotates pairs (2i, 2i+1)."""
    if x.dim() == 4:
        cos, sin = cos[:, :, None], sin[:, :, None]
    xf = x.float().unflatten(-1, (-1, 2))
    a, b = xf[..., 0], xf[..., 1]
    out = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    return out.to(x.dtype)
