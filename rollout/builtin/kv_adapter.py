"""`KVAdapter`: standard-attention transformers models (Llama and the like) over a `SlotCache`.

Cache: per layer keys and values [Hkv, T, D] per row (columns on dim 1), in the model's dtype.
Contract: the one in kpop.rollout.builtin.adapters. Two decode paths:
- direct (Llama, Qwen2, Qwen3 without sliding-window layers): one loop over the model's own
  modules and weights (rotary embedding; q|k|v and gate|up each one matmul over packed weights,
  kpop.rollout.builtin.packed; norms as one fused op, kpop.rollout.builtin.norms); the new
  keys/values are written into the slots in place and each row attends over its own length. In
  float32 or bfloat16 with RoPE over the whole head, RoPE, the write and the attention are one
  native call a layer (kpop.rollout.builtin.native.kv_attend, on torch's threads); otherwise
  torch's ops (SDPA for one row, `_attend` over a masked span for several). No per-step cache
  objects, masks built once per step, no copy of the cache.
- generic (every other architecture): the model's forward over a `DynamicCache` that views the
  slots, with a 0/1 mask of each row's length; the new column is copied back into the slots.
Both compute, per row, what the model's full forward computes for that row alone (tested).
Prefill: on the direct path the same loop over whole prompts (packed products through `project`,
causal SDPA, the head on the last position only); otherwise the model's forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kpop.rollout.builtin import native
from kpop.rollout.builtin.gated_mlp import gated_mlp
from kpop.rollout.builtin.kv_row_plan import KVRowStep, kv_row_plan
from kpop.rollout.builtin.kv_rows_plan import KVRowsStep, kv_rows_plan
from kpop.rollout.builtin.matmul import module_linear
from kpop.rollout.builtin.norms import rms
from kpop.rollout.builtin.packed import fused_output
from kpop.rollout.builtin.row_plan import PlanCache

DIRECT_TYPES = frozenset({"llama", "qwen2", "qwen3"})


def _direct_ok(model) -> bool:
    cfg = model.config
    if cfg.model_type not in DIRECT_TYPES:
        return False
    if "sliding_attention" in (getattr(cfg, "layer_types", None) or ()) or getattr(cfg, "use_sliding_window", False):
        return False
    inner = getattr(model, "model", None)
    return all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb"))


class KVAdapter:
    def __init__(self, model) -> None:
        self.model = model
        self.num_layers = model.config.num_hidden_layers
        self.col_dims = (1,) * (2 * self.num_layers)
        self.direct = _direct_ok(model)
        self._plans = PlanCache(kv_row_plan)
        self._rows_plans = PlanCache(kv_rows_plan)

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        from transformers import DynamicCache

        self._plans.check()
        self._rows_plans.check()
        if self.direct:
            return self._direct_prefill(ids)
        out = self.model(ids, past_key_values=DynamicCache(), use_cache=True)
        state: list[torch.Tensor] = []
        for layer in out.past_key_values.layers:
            state += [layer.keys, layer.values]
        return out.logits[:, -1], state

    @torch.inference_mode()
    def decode(self, tensors: list[torch.Tensor], lengths: torch.Tensor, width: int, tokens: torch.Tensor) -> torch.Tensor:
        B = tokens.shape[0]
        plan = self._plans.get(self) if B == 1 and self.direct else None
        if plan is not None:
            return self._decode_row(plan, tensors, lengths, width, tokens)
        tensors = [t[:B] for t in tensors]
        plan = self._rows_plans.get(self) if B > 1 and self.direct else None
        if plan is not None and KVRowsStep.fits(plan, tensors, lengths):
            return self._decode_rows(plan, tensors, lengths, width, tokens)
        return (self._direct if self.direct else self._generic)(tensors, lengths, width, tokens)

    def _decode_row(self, plan, tensors, lengths, width: int, tokens) -> torch.Tensor:
        """One float32 or bfloat16 row through the plan (kpop.rollout.builtin.kv_row_plan): two
        native calls a layer."""
        inner = self.model.model
        h = plan.embed(tokens, inner.embed_tokens)
        step = KVRowStep(plan, inner, width)
        for i in range(self.num_layers):
            h = plan.attention[i](h, tensors[2 * i], tensors[2 * i + 1], step)  # row 0 at their start
            h = plan.feed_forward[i](h, step)
        if plan.head is not None:
            return plan.head(h, step)
        return module_linear(self.model.lm_head, rms(inner.norm, h))[:, -1]

    def _decode_rows(self, plan, tensors, lengths, width: int, tokens) -> torch.Tensor:
        """Several rows through the plan (kpop.rollout.builtin.kv_rows_plan): `_direct`'s values."""
        inner = self.model.model
        h = inner.embed_tokens(tokens)
        step = KVRowsStep(plan, inner, lengths, width, h.shape[-1])
        for i in range(self.num_layers):
            h = plan.attention[i](h, tensors[2 * i], tensors[2 * i + 1], step)
            h = plan.feed_forward[i](h, step)
        return module_linear(self.model.lm_head, rms(inner.norm, h))

    def _direct(self, tensors, lengths, width: int, tokens) -> torch.Tensor:
        inner, B = self.model.model, tokens.shape[0]
        h = inner.embed_tokens(tokens[:, None])
        cos, sin = inner.rotary_emb(h.float(), lengths[:, None])  # [B, 1, D], float32 (HF's, before its cast)
        attend = (_native_step(cos, sin, lengths, width, tensors)
                  or _torch_step(cos.to(h.dtype), sin.to(h.dtype), lengths, width, tensors))
        for i, layer in enumerate(inner.layers[: self.num_layers]):
            attn, x = layer.self_attn, rms(layer.input_layernorm, h)
            qkv = fused_output(attn, "qkv", [attn.q_proj, attn.k_proj, attn.v_proj], x)  # q's heads, k's, v's
            if hasattr(attn, "q_norm"):
                qkv = _qk_normed(attn, qkv)
            o = attend(attn, qkv.view(B, -1), tensors[2 * i], tensors[2 * i + 1])  # [B, H * D]
            h = h + module_linear(attn.o_proj, o.view(B, 1, -1))
            h = h + gated_mlp(layer.mlp, rms(layer.post_attention_layernorm, h))
        return module_linear(self.model.lm_head, rms(inner.norm, h))[:, -1]

    def _direct_prefill(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The model's forward over prompts ids [B, T] (no padding) with the decode path's products:
        q|k|v and gate|up each one product over packed weights, through `project` (oneDNN at 2+
        float32 rows: HF's forward ran an 8-token prompt's products on one BLAS thread, 27 ms of
        the medium Llama's 41, ~4 decode steps), causal SDPA, and the head on the last position only."""
        inner, (B, T) = self.model.model, ids.shape
        h = inner.embed_tokens(ids)
        cos, sin = (t[:, None] for t in inner.rotary_emb(h, torch.arange(T, device=ids.device)[None].expand(B, T)))
        signed_sin = _signed(sin)
        state: list[torch.Tensor] = []
        for layer in inner.layers[: self.num_layers]:
            attn, x = layer.self_attn, rms(layer.input_layernorm, h)
            D = attn.head_dim
            heads, kv_heads = attn.q_proj.out_features // D, attn.k_proj.out_features // D
            qkv = fused_output(attn, "qkv", [attn.q_proj, attn.k_proj, attn.v_proj], x)
            q, k, v = qkv.view(B, T, -1, D).transpose(1, 2).split([heads, kv_heads, kv_heads], 1)  # [B, heads, T, D]
            if hasattr(attn, "q_norm"):
                q, k = rms(attn.q_norm, q), rms(attn.k_norm, k)
            q, k = _rope(q, cos, signed_sin), _rope(k, cos, signed_sin)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scaling, enable_gqa=heads != kv_heads)
            h = h + module_linear(attn.o_proj, o.transpose(1, 2).reshape(B, T, -1))
            h = h + gated_mlp(layer.mlp, rms(layer.post_attention_layernorm, h))
            state += [k, v]
        return module_linear(self.model.lm_head, rms(inner.norm, h[:, -1:]))[:, -1], state

    def _generic(self, tensors, lengths, width: int, tokens) -> torch.Tensor:
        from transformers import DynamicCache

        t = [x[:, :, :width] for x in tensors]
        cache = DynamicCache(ddp_cache_data=[(t[2 * i], t[2 * i + 1]) for i in range(self.num_layers)])
        cols = torch.arange(width + 1, device=lengths.device)
        mask = ((cols[None, :] < lengths[:, None]) | (cols[None, :] == width)).long()
        out = self.model(tokens[:, None], attention_mask=mask, position_ids=lengths[:, None], past_key_values=cache, use_cache=True)
        rows = torch.arange(tokens.shape[0], device=lengths.device)
        for i, layer in enumerate(out.past_key_values.layers):
            tensors[2 * i][rows, :, lengths] = layer.keys[:, :, -1]
            tensors[2 * i + 1][rows, :, lengths] = layer.values[:, :, -1]
        return out.logits[:, -1]


def _qk_normed(attn, qkv: torch.Tensor) -> torch.Tensor:
    """qkv [B, 1, (H + 2 Hkv) D] with q's and k's heads through their own RMSNorms (Qwen3)."""
    B, D = qkv.shape[0], attn.head_dim
    heads, kv_heads = attn.q_proj.out_features // D, attn.k_proj.out_features // D
    q, k, v = qkv.view(B, heads + 2 * kv_heads, D).split([heads, kv_heads, kv_heads], 1)
    return torch.cat([rms(attn.q_norm, q), rms(attn.k_norm, k), v], 1).view(B, 1, -1)


def _native_step(cos, sin, lengths, width: int, tensors):
    """The step's attention as one `native.kv_attend` per layer, or None where the kernel does not
    apply (a cache neither float32 nor bfloat16, RoPE over part of the head, or the kernels
    unavailable). cos/sin: float32."""
    B, D, dtype = cos.shape[0], tensors[0].shape[-1], tensors[0].dtype
    if (cos.shape[-1] != D or D % 2 or lengths.dtype != torch.int64 or not native.fits(*tensors, dtype=dtype)
            or not native.fits(cos, sin)):
        return None
    cos, sin, lengths = cos.reshape(B, D).contiguous(), sin.reshape(B, D).contiguous(), lengths.contiguous()

    def attend(attn, qkv, keys, values):
        heads, kv_heads = attn.q_proj.out_features // D, attn.k_proj.out_features // D
        return native.kv_attend(qkv.contiguous(), heads, kv_heads, cos, sin, keys, values, lengths, attn.scaling, width + 1)

    return attend


def _torch_step(cos, sin, lengths, width: int, tensors):
    """The step's attention on torch's ops: RoPE, the new column written by `index_put`, SDPA for
    one row, `_attend` over a masked span for several."""
    B, cap = cos.shape[0], tensors[0].shape[2]
    signed_sin = _signed(sin)
    # One row attends over all its width + 1 columns: no mask. Several rows: 0 / -inf past each
    # length, over `span` columns: all of the cache's capacity once width + 1 reaches 3/5 of it
    # (a strided [:width + 1] view costs ~1.5x per column; see `attention_span`).
    span = width + 1 if B == 1 else attention_span(width + 1, cap)
    cols = torch.arange(span, device=lengths.device)
    bias = None if B == 1 else torch.zeros(B, 1, 1, span, device=cos.device).masked_fill_(
        cols[None, None, None, :] > lengths[:, None, None, None], float("-inf"))
    rows = torch.arange(B, device=lengths.device)

    def attend(attn, qkv, keys, values):
        D = attn.head_dim
        heads, kv_heads = attn.q_proj.out_features // D, attn.k_proj.out_features // D
        qk, v = qkv[:, : (heads + kv_heads) * D].view(B, -1, D), qkv[:, (heads + kv_heads) * D :]
        q, k = _rope(qk, cos, signed_sin).split([heads, kv_heads], 1)
        keys[rows, :, lengths] = k
        values[rows, :, lengths] = v.view(B, -1, D)
        q, keys, values = q[:, :, None], keys[:, :, :span], values[:, :, :span]  # q [B, H, 1, D]
        if bias is None:
            o = F.scaled_dot_product_attention(q, keys, values, scale=attn.scaling, enable_gqa=heads != kv_heads)
        else:
            o = _attend(q, keys, values, bias, attn.scaling)
        return o.transpose(1, 2).reshape(B, -1)

    return attend


def attention_span(columns: int, capacity: int) -> int:
    """Columns a several-row step attends over: `columns` (the widest row's, the new one included),
    or the whole `capacity` once columns >= 3/5 of it. The columns past a row's length are masked
    (-inf before the softmax: weight 0), so both give the same values. Why: a [:columns] view of
    the [B, H, capacity, D] cache leaves a gap after every (row, head) block, and reading it cost
    ~1.5x per column what the whole, contiguous capacity costs (64 rows, 12 heads of 64, fp32:
    capacity 72 whole 1.15 ms a layer, 48 columns 1.62, 64 columns 2.00; capacity 256 whole 3.83,
    160 columns 3.80, 192 columns 4.41)."""
    return capacity if 5 * columns >= 3 * capacity else columns


def _signed(sin: torch.Tensor) -> torch.Tensor:
    """[-sin1, sin2] for sin = [sin1, sin2] on the last dim: the sine `_rope` takes."""
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], -1)


def _rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """transformers' `apply_rotary_pos_emb` on x [..., D] with cos/sin broadcasting to it (decode:
    x [B, heads, D], cos [B, 1, D]; prefill: x [B, heads, T, D], cos [B, 1, T, D]): `x * cos +
    rotate_half(x) * sin`, rotate_half(x) = [-x2, x1], here as [x2, x1] (a roll) times
    [-sin1, sin2]: the same products and sums, so the same values, in 4 ops for q and k at once."""
    return x * cos + x.roll(cos.shape[-1] // 2, -1) * signed_sin


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T scale + bias) v for one query per row: q [B, H, 1, D], keys/values [B, Hkv, W, D]
    (query heads grouped over the key heads as HF's `repeat_kv` does), bias [B, 1, 1, W] (0 / -inf),
    scores and softmax in float32. SDPA's masked CPU path costs 1.6x this at 64 rows and 65 columns
    (1.03 vs 0.64 ms per layer) and grows past 64 columns; at one row SDPA is faster and is used."""
    B, H, _, D = q.shape
    kv_heads = keys.shape[1]
    scores = torch.matmul(q.view(B, kv_heads, H // kv_heads, D), keys.transpose(-1, -2)).float() * scale + bias
    return torch.matmul(scores.softmax(-1).to(values.dtype), values).view(B, H, 1, D)
