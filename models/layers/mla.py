"""Multi-head latent attention (DeepSeek-V2 MLA) in the BailingMoeV2_5 layout.

    q            = q_proj(x)  or  q_b_proj(q_a_layernorm(q_a_proj(x)))          [H, nope + rope]
    c, k_rope    = split(kv_a_proj_with_mqa(x), [kv_lora_rank, qk_rope_head_dim])
    c            = kv_a_layernorm(c)                                            the cached latent
    k_nope, v    = split(kv_b_proj(c), per head [qk_nope_head_dim, v_head_dim])
    q_rope, k_rope: interleaved RoPE; k_rope is one head shared by all query heads
    score_h      = (q_nope . k_nope + q_rope . k_rope) / sqrt(qk_nope_head_dim + qk_rope_head_dim)
    y            = dense(softmax(score) v)                    (no QK-norm in MLA layers)

Cache (`MLACache`): only the normalised latent c [B, T, r] and the rotated k_rope [B, T, rope] per
layer -- (r + rope) numbers per token instead of H * (2 d). With cached past tokens the layer uses
the "absorbed" form: kv_b's key half is folded into the query (q_nope W_uk -> latent space) and its
value half applied after attending over the latents, so the cache is never expanded per head.
Without a past it expands k/v and calls SDPA. Both forms are tested against each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kpop.models.layers.norm import RMSNorm
from kpop.models.layers.rope import apply_interleaved, rope_angles


@dataclass
class MLACache:
    latent: torch.Tensor  # [B, T, kv_lora_rank]
    k_rope: torch.Tensor  # [B, T, qk_rope_head_dim], already rotated

    def append(self, latent: torch.Tensor, k_rope: torch.Tensor) -> MLACache:
        return MLACache(torch.cat([self.latent, latent], 1), torch.cat([self.k_rope, k_rope], 1))


class MultiLatentAttention(nn.Module):
    def __init__(self, config, layer_idx: int) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.nope, self.rope, self.v_dim = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        self.rank, self.q_lora_rank, self.rope_theta = config.kv_lora_rank, config.q_lora_rank, config.rope_theta
        self.scaling = (self.nope + self.rope) ** -0.5
        h, qdim = config.hidden_size, self.num_heads * (self.nope + self.rope)
        if self.q_lora_rank is None:
            self.q_proj = nn.Linear(h, qdim, bias=False)
        else:
            self.q_a_proj = nn.Linear(h, self.q_lora_rank, bias=config.use_qkv_bias)
            self.q_a_layernorm = RMSNorm(self.q_lora_rank, config.rms_norm_eps)
            self.q_b_proj = nn.Linear(self.q_lora_rank, qdim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(h, self.rank + self.rope, bias=config.use_qkv_bias)
        self.kv_a_layernorm = RMSNorm(self.rank, config.rms_norm_eps)
        self.kv_b_proj = nn.Linear(self.rank, self.num_heads * (self.nope + self.v_dim), bias=False)
        self.dense = nn.Linear(self.num_heads * self.v_dim, h, bias=config.use_qkv_bias)

    def queries(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        q = self.q_proj(x) if self.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q_nope, q_rope = q.view(B, T, self.num_heads, -1).split([self.nope, self.rope], -1)
        return q_nope, apply_interleaved(q_rope, cos, sin)

    def latents(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, k_rope = self.kv_a_proj_with_mqa(x).split([self.rank, self.rope], -1)
        return self.kv_a_layernorm(c), apply_interleaved(k_rope, cos, sin)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        cache: MLACache | None = None,
        use_cache: bool = False,
        attention_mask: torch.Tensor | None = None,
        absorb: bool | None = None,
    ) -> tuple[torch.Tensor, MLACache | None]:
        B, T, _ = x.shape
        cos, sin = rope_angles(positions, self.rope, self.rope_theta)
        q_nope, q_rope = self.queries(x, cos, sin)
        c, k_rope = self.latents(x, cos, sin)
        past = 0 if cache is None else cache.latent.shape[1]
        full = MLACache(c, k_rope) if cache is None else cache.append(c, k_rope)
        mask = self._mask(T, past, attention_mask, x.device)
        absorb = past > 0 if absorb is None else absorb
        attend = self._absorbed if absorb else self._expanded
        out = attend(q_nope, q_rope, full, mask)
        return self.dense(out.reshape(B, T, -1).to(x.dtype)), (full if use_cache else None)

    def _mask(self, T: int, past: int, attention_mask: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """Boolean [B or 1, 1, T, past+T]: True where attending is allowed."""
        qpos = torch.arange(past, past + T, device=device)[:, None]
        allowed = (torch.arange(past + T, device=device)[None, :] <= qpos)[None, None]
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, : past + T].bool()
        return allowed

    def _split_kv_b(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.kv_b_proj.weight.view(self.num_heads, self.nope + self.v_dim, self.rank)
        return w[:, : self.nope], w[:, self.nope :]  # W_uk [H, nope, r], W_uv [H, v, r]

    def _expanded(self, q_nope, q_rope, full: MLACache, mask) -> torch.Tensor:
        B, S, _ = full.latent.shape
        kv = self.kv_b_proj(full.latent).view(B, S, self.num_heads, self.nope + self.v_dim)
        k_nope, v = kv.split([self.nope, self.v_dim], -1)
        k = torch.cat([k_nope, full.k_rope[:, :, None].expand(B, S, self.num_heads, self.rope)], -1)
        q = torch.cat([q_nope, q_rope], -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=self.scaling)
        return out.transpose(1, 2)

    def _absorbed(self, q_nope, q_rope, full: MLACache, mask) -> torch.Tensor:
        w_uk, w_uv = self._split_kv_b()
        q_lat = torch.einsum("bthn,hnr->bhtr", q_nope.float(), w_uk.float())
        scores = torch.einsum("bhtr,bsr->bhts", q_lat, full.latent.float())
        scores = scores + torch.einsum("bthd,bsd->bhts", q_rope.float(), full.k_rope.float())
        probs = (scores * self.scaling).masked_fill(~mask, float("-inf")).softmax(-1)
        ctx = torch.einsum("bhts,bsr->bhtr", probs, full.latent.float())
        return torch.einsum("bhtr,hvr->bthv", ctx, w_uv.float())
