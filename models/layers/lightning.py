"""Lightning Attention layer (the linear-attention layers of the hybrid), BailingMoeV2_5 layout.

    qkv  = query_key_value(x)                 fused, full multi-head: [q | k | v], H heads each
    q, k = query_layernorm(q), key_layernorm(k)      per-head RMSNorm (use_qk_norm)
    q, k = partial RoPE (rotate-half on the first head_dim * partial_rotary_factor dims)
    o    = simple_gla(q, k, v, g)             constant per-head log-decay g (ops/decay.py), scale d^-1/2
    y    = dense( g_norm(o) * sigmoid(g_proj(x)) )       g_norm: RMSNorm over group_norm_size groups

Decoding state: one float32 [B, H, d, d] matrix per layer (`state` in and out), independent of
the sequence length. Mode "auto" uses the recurrent form for <= 64 new tokens (as the public HF
code does) and the chunked form otherwise; both give the same result. A 0/1 `attention_mask`
[B, T] (left padding) zeroes v at padded positions so they add nothing to the state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kpop.models.layers.norm import GroupRMSNorm, RMSNorm
from kpop.models.layers.rope import apply_neox_partial, rope_angles
from kpop.models.ops.decay import log_decay_values
from kpop.models.ops.lightning import lightning_attention

RECURRENT_MAX_TOKENS = 64


class LightningAttention(nn.Module):
    def __init__(self, config, layer_idx: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        inner = self.num_heads * self.head_dim
        self.rope_dim = int(self.head_dim * config.partial_rotary_factor)
        self.rope_theta = config.rope_theta
        self.linear_silu = bool(getattr(config, "linear_silu", False))
        self.query_key_value = nn.Linear(config.hidden_size, 3 * inner, bias=config.use_qkv_bias)
        self.use_qk_norm = bool(config.use_qk_norm)
        if self.use_qk_norm:
            self.query_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.key_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.g_proj = nn.Linear(config.hidden_size, inner, bias=False)
        self.g_norm = GroupRMSNorm(inner, config.group_norm_size, config.rms_norm_eps)
        self.dense = nn.Linear(inner, config.hidden_size, bias=config.use_bias)
        offset = int(getattr(config, "lightning_decay_offset", 0))
        # A plain list, not a buffer: transformers' meta-device loading empties non-persistent buffers.
        self.log_decay_values = log_decay_values(self.num_heads, layer_idx, config.num_hidden_layers, offset)
        self.mode = "auto"
        self.chunk_size = 64
        self.backend = "auto"

    def log_decay(self, device: torch.device) -> torch.Tensor:
        return torch.tensor(self.log_decay_values, dtype=torch.float32, device=device)

    def project_qkv(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        qkv = self.query_key_value(x)
        if self.linear_silu:
            qkv = F.silu(qkv)
        q, k, v = qkv.view(B, T, 3, self.num_heads, self.head_dim).unbind(2)
        if self.use_qk_norm:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        if self.rope_dim:
            cos, sin = rope_angles(positions, self.rope_dim, self.rope_theta)
            q, k = apply_neox_partial(q, cos, sin), apply_neox_partial(k, cos, sin)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        state: torch.Tensor | None = None,
        use_cache: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, _ = x.shape
        q, k, v = self.project_qkv(x, positions)
        if attention_mask is not None:
            v = v * attention_mask[:, -T:, None, None].to(v.dtype)
        mode = self.mode
        if mode == "auto":
            mode = "recurrent" if T <= RECURRENT_MAX_TOKENS else "chunk"
        o, new_state = lightning_attention(
            q, k, v, self.log_decay(x.device), initial_state=state, output_final_state=use_cache,
            mode=mode, chunk_size=self.chunk_size, backend=self.backend,
        )
        o = self.g_norm(o.reshape(B, T, -1).to(x.dtype)) * torch.sigmoid(self.g_proj(x))
        return self.dense(o), new_state
