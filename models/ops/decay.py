"""Constant per-head log-decay of Lightning Attention (ALiBi slopes scaled by depth).

Slopes (Press et al., ALiBi): for H a power of two, `s_h = 2^(-8(h+1)/H)`; otherwise the first
2^floor(log2 H) slopes of that power of two followed by every other slope of the next power of two.

Depth scaling, `g_h = -s_h * (1 - (layer_idx - offset) / (L - 1) + 1e-5)`, with `offset` the config
field `lightning_decay_offset`:
  * 0 -- the form of stock vLLM's `BailingMoELinearAttention` (and SGLang); KPop's default, so the
    model trained here decays exactly like the model vLLM serves.
  * 1 -- the form of the public Hugging Face `modeling_bailing_moe_v2_5.py` (layer 0 scale 1.0526).
A single-layer model uses scale `1 + 1e-5`. Deeper layers decay more slowly (scale shrinks to ~0).
"""

from __future__ import annotations

import math

import torch


def alibi_slopes(num_heads: int) -> list[float]:
    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


def depth_scale(layer_idx: int, num_layers: int, offset: int = 0) -> float:
    if num_layers <= 1:
        return 1.0 + 1e-5
    return 1.0 - (layer_idx - offset) / (num_layers - 1) + 1e-5


def log_decay_values(num_heads: int, layer_idx: int, num_layers: int, offset: int = 0) -> list[float]:
    """Per-head log-decay g_h < 0 as plain floats (safe under transformers' meta-device init)."""
    scale = depth_scale(layer_idx, num_layers, offset)
    return [-s * scale for s in alibi_slopes(num_heads)]


def lightning_log_decay(num_heads: int, layer_idx: int, num_layers: int, offset: int = 0) -> torch.Tensor:
    """Per-head log-decay g_h < 0 (float32, shape [H])."""
    return torch.tensor(log_decay_values(num_heads, layer_idx, num_layers, offset), dtype=torch.float32)
