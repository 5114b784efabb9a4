"""Model adapters: prefill and one decode step of a model over a `SlotCache` (kpop.rollout.builtin.slots).

- `HybridAdapter`: `BailingMoeV2_5ForCausalLM` (kpop.models.hybrid). Per layer either a Lightning
  state [H, d, d] (float32, no columns, updated in place: S <- exp(g) S + k^T v) or an MLA latent
  [T, r] and rotated k_rope [T, rope] (columns on dim 0), attended in the absorbed form over each
  row's own length. Everything else (norms, projections, RoPE, MoE) is the model's own modules.
- `KVAdapter` (kpop.rollout.builtin.kv_adapter): standard attention through transformers.

Contract (both): `col_dims` gives each cache tensor's per-row column dimension (None: no
columns). `prefill(ids [n, T])` -> (logits of the last position [n, V], per-tensor state [n, ...]
with T columns), run by the model's own forward. `decode(tensors, lengths [B] long, width, tokens
[B])` -> logits [B, V]: row b holds `lengths[b]` tokens of context (width = max of lengths); the
new token's state is written at column lengths[b] of row b in place; the caller then counts it.
A decoded row computes what the model's full forward computes for that row alone (tested).
Both run under `torch.inference_mode()`.
"""

from __future__ import annotations

import torch

from kpop.rollout.builtin.moe_decode import moe_forward


class HybridAdapter:
    def __init__(self, model) -> None:
        from kpop.models.hybrid.modeling import DecoderLayer

        self.model = model
        n = model.config.num_hidden_layers
        self.layers: list[DecoderLayer] = list(model.model.layers[:n])
        self.is_mla = [bool(model.config.is_mla_layer(i)) for i in range(n)]
        self.col_dims = tuple(d for mla in self.is_mla for d in ((0, 0) if mla else (None,)))
        self._decay = {}  # layer index -> exp(log-decay) [H, 1, 1], built once per device

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = self.model(ids, past_key_values=self.model.new_cache(), use_cache=True)
        state: list[torch.Tensor] = []
        for mla, entry in zip(self.is_mla, out.past_key_values.layers):
            state += [entry.latent, entry.k_rope] if mla else [entry]
        return out.logits[:, -1], state

    @torch.inference_mode()
    def decode(self, tensors: list[torch.Tensor], lengths: torch.Tensor, width: int, tokens: torch.Tensor) -> torch.Tensor:
        B = tokens.shape[0]
        h = self.model.model.word_embeddings(tokens[:, None])
        positions = lengths[:, None]
        cols = torch.arange(width + 1, device=lengths.device)
        mask = (cols[None, :] <= lengths[:, None])[:, None, None, :]  # [B, 1, 1, width + 1]
        rows = torch.arange(B, device=lengths.device)
        it = iter(tensors)
        for i, (layer, mla) in enumerate(zip(self.layers, self.is_mla)):
            x = layer.input_layernorm(h)
            if mla:
                latent, k_rope = next(it)[:B], next(it)[:B]
                attn = self._mla(layer.attention, x, positions, latent, k_rope, rows, lengths, width, mask)
            else:
                attn = self._lightning(i, layer.attention, x, positions, next(it)[:B])
            h = h + attn
            normed = layer.post_attention_layernorm(h)
            h = h + moe_forward(layer.mlp, normed)
        return self.model.lm_head(self.model.model.norm(h))[:, -1]

    def _lightning(self, i: int, attn, x, positions, state: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        q, k, v = attn.project_qkv(x, positions)  # [B, 1, H, d]
        decay = self._decay.get(i)
        if decay is None or decay.device != x.device:
            decay = self._decay[i] = torch.exp(attn.log_decay(x.device))[:, None, None]
        q, k, v = q[:, 0].float(), k[:, 0].float(), v[:, 0].float()
        state.mul_(decay).add_(k[..., :, None] * v[..., None, :])  # recurrent_lightning_attention's update
        o = torch.matmul(q[..., None, :] * q.shape[-1] ** -0.5, state)  # [B, H, 1, d]
        o = attn.g_norm(o.reshape(B, 1, -1).to(x.dtype)) * torch.sigmoid(attn.g_proj(x))
        return attn.dense(o)

    @staticmethod
    def _mla(attn, x, positions, latent, k_rope, rows, lengths, width: int, mask) -> torch.Tensor:
        from kpop.models.layers.mla import MLACache
        from kpop.models.layers.rope import rope_angles

        B = x.shape[0]
        cos, sin = rope_angles(positions, attn.rope, attn.rope_theta)
        q_nope, q_rope = attn.queries(x, cos, sin)
        c, kr = attn.latents(x, cos, sin)
        latent[rows, lengths] = c[:, 0].to(latent.dtype)
        k_rope[rows, lengths] = kr[:, 0].to(k_rope.dtype)
        full = MLACache(latent[:, : width + 1], k_rope[:, : width + 1])
        out = attn._absorbed(q_nope, q_rope, full, mask)
        return attn.dense(out.reshape(B, 1, -1).to(x.dtype))


def adapter_for(model):
    from kpop.models.hybrid.modeling import BailingMoeV2_5ForCausalLM
    from kpop.rollout.builtin.kv_adapter import KVAdapter

    return HybridAdapter(model) if isinstance(model, BailingMoeV2_5ForCausalLM) else KVAdapter(model)
