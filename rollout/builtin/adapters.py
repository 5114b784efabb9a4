"""Model adapters: prefill and one decode step of a model over a `SlotCache` (kpop.rollout.builtin.slots).

- `HybridAdapter`: `BailingMoeV2_5ForCausalLM` (kpop.models.hybrid). Per layer either a Lightning
  state [H, d, d] (float32, no columns, updated in place: S <- exp(g) S + k^T v) or an MLA latent
  [T, r] and rotated k_rope [T, rope] (columns on dim 0), attended in the absorbed form over each
  row's own length. The model's own modules and weights throughout; the norms as one fused op each
  (kpop.rollout.builtin.norms), one RoPE table per step, MoE with one host sync per layer; the
  projections that read the same input as one matmul (Lightning q|k|v|gate, MLA q|kv_a; weights
  packed, kpop.rollout.builtin.packed). One row (float32 or bfloat16): each layer's blocks as
  native kernels through a prepared plan (kpop.rollout.builtin.row_plan) where they are built;
  several rows: each Lightning layer's work between its projections natively, each MLA layer's
  between its products natively (`_mla_rows_native`), the MoE's bookkeeping natively
  (kpop.rollout.builtin.moe_decode). Prefill runs the model's decoder layers (`prefill`), its
  Lightning layers in the chunked form (the same values as the recurrent form the model picks for
  short prompts, without a fresh state per token).
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
import torch.nn.functional as F

from kpop.models.layers.rope import apply_interleaved, rope_angles
from kpop.rollout.builtin import native
from kpop.rollout.builtin.matmul import module_linear
from kpop.rollout.builtin.moe_decode import moe_forward
from kpop.rollout.builtin.norms import eps_of, group_rms, rms
from kpop.rollout.builtin.packed import fused_linear, fused_output, packed
from kpop.rollout.builtin.packed import rows as row_layout
from kpop.rollout.builtin.row_plan import (
    PlanCache,
    RowPlan,
    RowStep,
    hybrid_row_plan,
    lightning_qualifies,
    mla_qualifies,
)


class HybridAdapter:
    def __init__(self, model) -> None:
        from kpop.models.hybrid.modeling import DecoderLayer

        self.model = model
        n = model.config.num_hidden_layers
        self.layers: list[DecoderLayer] = list(model.model.layers[:n])
        self.is_mla = [bool(model.config.is_mla_layer(i)) for i in range(n)]
        self.col_dims = tuple(d for mla in self.is_mla for d in ((0, 0) if mla else (None,)))
        self._decay = {}  # layer index -> exp(log-decay) [H, 1, 1], built once per device
        self._plans = PlanCache(hybrid_row_plan)

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The model's decoder layers over the prompts: each attention module's own forward (the
        Lightning ones in their chunked form: the recurrent one, "auto" below 64 tokens, writes a
        fresh [n, H, d, d] state per token, which dominates a batched prefill on a CPU), the
        feed-forwards through `moe_forward`, the norms fused, the head on the last position only.
        Why not the model's forward: its MoE runs each expert's few rows through three `F.linear`
        calls, which in bf16 reorder the weight every call (a one-row 8-token prompt of the medium
        hybrid: 21 of its 34 ms in the MoE layers)."""
        self._plans.check()
        inner = self.model.model
        positions = torch.arange(ids.shape[1], device=ids.device).expand(*ids.shape)
        h, state = inner.word_embeddings(ids), []
        lightning = [layer.attention for layer, mla in zip(self.layers, self.is_mla) if not mla]
        modes = [attn.mode for attn in lightning]
        try:
            for attn in lightning:
                attn.mode = "chunk"
            for layer, mla in zip(self.layers, self.is_mla):
                out, entry = layer.attention(rms(layer.input_layernorm, h), positions, None, True)
                h = h + out
                h = moe_forward(layer.mlp, rms(layer.post_attention_layernorm, h), residual=h)
                state += [entry.latent, entry.k_rope] if mla else [entry]
        finally:
            for attn, mode in zip(lightning, modes):
                attn.mode = mode
        return module_linear(self.model.lm_head, rms(inner.norm, h[:, -1])), state

    @torch.inference_mode()
    def decode(self, tensors: list[torch.Tensor], lengths: torch.Tensor, width: int, tokens: torch.Tensor) -> torch.Tensor:
        B = tokens.shape[0]
        plan = self._row_plan() if B == 1 else None
        if plan is not None:
            return self._decode_row(plan, tensors, lengths, width, tokens)
        h = self.model.model.word_embeddings(tokens[:, None])
        positions = lengths[:, None]
        angles: dict[tuple[int, float], tuple[torch.Tensor, torch.Tensor]] = {}  # one RoPE table per step

        def rope(rot: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
            if (rot, theta) not in angles:
                angles[rot, theta] = rope_angles(positions, rot, theta)
            return angles[rot, theta]

        cols = torch.arange(width + 1, device=lengths.device)
        mask = (cols[None, :] <= lengths[:, None])[:, None, None, :]  # [B, 1, 1, width + 1]
        rows = torch.arange(B, device=lengths.device)
        it = iter(tensors)
        for i, (layer, mla) in enumerate(zip(self.layers, self.is_mla)):
            if mla:
                latent, k_rope = next(it)[:B], next(it)[:B]
                cos, sin = rope(layer.attention.rope, layer.attention.rope_theta)
                whole = _mla_block_native(layer, h, cos, sin, latent, k_rope, width) if B == 1 else None
                if whole is None:
                    x = rms(layer.input_layernorm, h)
                    whole = h + self._mla(layer.attention, x, cos, sin, latent, k_rope, rows, lengths, width, mask)
            else:
                state, decay = next(it)[:B], self._decay_of(i, layer.attention, h.device)
                whole = _lightning_block_native(layer, h, rope, state, decay) if B == 1 else None
                if whole is None:
                    whole = h + self._lightning(layer.attention, rms(layer.input_layernorm, h), rope, state, decay)
            h = moe_forward(layer.mlp, rms(layer.post_attention_layernorm, whole), residual=whole)
        return module_linear(self.model.lm_head, rms(self.model.model.norm, h))[:, -1]

    def _row_plan(self) -> RowPlan | None:
        """The one-row native plan (kpop.rollout.builtin.row_plan), or None (the per-layer paths)."""
        return self._plans.get(self)

    def _decode_row(self, plan: RowPlan, tensors, lengths, width: int, tokens) -> torch.Tensor:
        """`decode` for one float32 or bfloat16 row through the plan: two native calls a layer (a
        feed-forward the kernels do not take runs `moe_forward`)."""
        h = plan.embed(tokens, self.model.model.word_embeddings)
        step, it = RowStep(plan, width), iter(tensors)
        for i, (layer, mla) in enumerate(zip(self.layers, self.is_mla)):
            caches = (next(it), next(it)) if mla else (next(it),)  # row 0 at the start of each
            h = plan.attention[i](h, *caches, step)
            feed_forward = plan.feed_forward[i]
            if feed_forward is None:
                h = h + moe_forward(layer.mlp, rms(layer.post_attention_layernorm, h))
            else:
                h = feed_forward(h, step)
        if plan.head is not None:
            return plan.head(h, step)
        return module_linear(self.model.lm_head, rms(self.model.model.norm, h))[:, -1]

    def _decay_of(self, i: int, attn, device) -> torch.Tensor:
        """exp(log-decay) [H, 1, 1] of Lightning layer i, built once per device."""
        decay = self._decay.get(i)
        if decay is None or decay.device != device:
            decay = self._decay[i] = torch.exp(attn.log_decay(device))[:, None, None]
        return decay

    @staticmethod
    def _lightning(attn, x, rope, state: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
        """`LightningAttention.forward` for one token per row, the [B, H, d, d] state updated in place."""
        native_out = _lightning_rows_native(attn, x, rope, state, decay)
        if native_out is not None:
            return native_out
        B, H, d = x.shape[0], attn.num_heads, attn.head_dim
        qkv, gate = fused_linear(attn, "qkv_g", [attn.query_key_value, attn.g_proj], x)
        if attn.linear_silu:
            qkv = F.silu(qkv)
        q, k, v = qkv.view(B, 3, H, d).unbind(1)
        if attn.use_qk_norm:
            q, k = rms(attn.query_layernorm, q), rms(attn.key_layernorm, k)
        if attn.rope_dim:
            q, k = _neox(torch.stack([q, k]), *rope(attn.rope_dim, attn.rope_theta)).unbind(0)
        q, k, v = q.float(), k.float(), v.float()
        state.mul_(decay).addcmul_(k[..., :, None], v[..., None, :])  # S <- exp(g) S + k^T v
        o = torch.matmul((q * d**-0.5)[..., None, :], state)  # [B, H, 1, d]
        o = group_rms(attn.g_norm, o.view(B, 1, H * d).to(x.dtype)) * torch.sigmoid(gate)
        return module_linear(attn.dense, o)

    @staticmethod
    def _mla(attn, x, cos, sin, latent, k_rope, rows, lengths, width: int, mask) -> torch.Tensor:
        """`MultiLatentAttention.forward` (absorbed form) for one token per row over each row's length."""
        from kpop.models.layers.mla import MLACache

        B = x.shape[0]
        native_out = _mla_rows_native(attn, x, cos, sin, latent, k_rope, lengths, width) if B > 1 else None
        if native_out is not None:
            return native_out
        first = attn.q_proj if attn.q_lora_rank is None else attn.q_a_proj
        q, kv = fused_linear(attn, "q_kv_a", [first, attn.kv_a_proj_with_mqa], x)
        if attn.q_lora_rank is not None:
            q = module_linear(attn.q_b_proj, rms(attn.q_a_layernorm, q))
        q_nope, q_rope = q.view(B, 1, attn.num_heads, -1).split([attn.nope, attn.rope], -1)
        c, kr = kv.split([attn.rank, attn.rope], -1)
        latent[rows, lengths] = rms(attn.kv_a_layernorm, c)[:, 0].to(latent.dtype)
        k_rope[rows, lengths] = apply_interleaved(kr, cos, sin)[:, 0].to(k_rope.dtype)
        q_rope = apply_interleaved(q_rope, cos, sin)
        kv_b = attn.kv_b_proj.weight
        if B == 1 and q.dtype == torch.float32 and native.fits(latent, k_rope, kv_b):
            # one row: every one of its width + 1 columns is attended (no mask)
            out = native.mla_row(q_nope[0, 0].contiguous(), q_rope[0, 0].contiguous(), latent[0, : width + 1],
                                 k_rope[0, : width + 1], kv_b, attn.scaling)
        else:
            out = attn._absorbed(q_nope, q_rope, MLACache(latent[:, : width + 1], k_rope[:, : width + 1]), mask)
        return module_linear(attn.dense, out.reshape(B, 1, -1).to(x.dtype))


def _lightning_core(attn, rope) -> tuple:
    """What both Lightning kernels take after the state and decay (kpop.rollout.builtin.native):
    q and k norm weights (or None), the RoPE tables (or None), the group norm's weight and groups,
    the two eps and the query scale. Read through the modules' own dicts: `nn.Module.__getattr__`
    is ~1 us an attribute here."""
    modules = attn._modules
    norms = (modules["query_layernorm"], modules["key_layernorm"]) if attn.use_qk_norm else ()
    q_w, k_w = (norms[0].weight, norms[1].weight) if norms else (None, None)
    cos = sin = None
    if attn.rope_dim:
        cos, sin = (t.contiguous() for t in rope(attn.rope_dim, attn.rope_theta))
    g_norm = modules["g_norm"]
    return (q_w, k_w, cos, sin, g_norm.weight, g_norm.groups, norms[0].eps if norms else 0.0, g_norm.eps,
            attn.head_dim**-0.5)


def _lightning_block_native(layer, h, rope, state: torch.Tensor, decay: torch.Tensor) -> torch.Tensor | None:
    """h + the layer's Lightning attention of RMSNorm(h) for one float32 row, in one native call
    (kpop.rollout.builtin.native.lightning_layer_row: its projections included), or None where the
    layer does not qualify (kpop.rollout.builtin.row_plan.lightning_qualifies, or another dtype)."""
    attn, norm = layer.attention, layer.input_layernorm
    if not lightning_qualifies(attn):
        return None
    modules = attn._modules
    qkv_w, g_w, dense_w = (modules[name]._parameters["weight"] for name in ("query_key_value", "g_proj", "dense"))
    w_qkvg = packed(attn, "qkv_g.weight", [qkv_w, g_w], row_layout)  # the tensor `fused_linear` multiplies by
    core = _lightning_core(attn, rope)
    if not native.fits(h, norm.weight, w_qkvg, dense_w, state, decay, core[4], core[0], core[1]):
        return None
    return native.lightning_layer_row(
        h.reshape(-1), norm.weight, eps_of(norm), w_qkvg, attn.linear_silu, state, decay, *core, dense_w,
    ).view(h.shape)


def _lightning_rows_native(attn, x, rope, state: torch.Tensor, decay: torch.Tensor) -> torch.Tensor | None:
    """`HybridAdapter._lightning` for float32 or bfloat16 rows with everything between the two
    projections in one native call (kpop.rollout.builtin.native.lightning_rows: one pass over each
    row's state), or None where the layer does not qualify (kpop.rollout.builtin.row_plan.
    lightning_qualifies, or another dtype)."""
    if not lightning_qualifies(attn):
        return None
    core = _lightning_core(attn, rope)
    if not (native.fits(x, core[4], core[0], core[1], dtype=x.dtype) and native.fits(state, decay, core[2], core[3])):
        return None
    modules = attn._modules
    qkvg = fused_output(attn, "qkv_g", [modules["query_key_value"], modules["g_proj"]], x).contiguous()
    o = native.lightning_rows(qkvg, attn.linear_silu, state, decay, *core)
    return module_linear(modules["dense"], o.view(*x.shape[:-1], -1))


def _mla_rows_native(attn, x, cos, sin, latent, k_rope, lengths, width: int) -> torch.Tensor | None:
    """`HybridAdapter._mla` for several rows with the work between the products natively: the cache
    writes and the queries' RoPE in one call (`native.mla_prep_rows`), `_absorbed`'s head products
    as there (float32 `bmm` by W_uk and W_uv), the attention between them in one call
    (`native.mla_attend_rows`: each cached column read once per row for all heads). None where it
    does not qualify (a low-rank q, or tensors of another dtype than the rows'). Medium hybrid, 64
    bf16 rows, in-process A/B against the torch ops (`_absorbed`'s einsums and ~20 ops, 16
    alternating pairs): 0.974x the step (0.86-1.05); the attention call alone 0.986-0.990x."""
    kv_norm = attn._modules["kv_a_layernorm"]
    if attn.q_lora_rank is not None or not native.fits(x, latent, k_rope, kv_norm.weight, dtype=x.dtype):
        return None
    modules = attn._modules
    qkv = fused_output(attn, "q_kv_a", [modules["q_proj"], modules["kv_a_proj_with_mqa"]], x)[:, 0].contiguous()
    q_nope, q_rope = native.mla_prep_rows(qkv, attn.num_heads, attn.nope, attn.rope, kv_norm.weight, eps_of(kv_norm),
                                          cos[:, 0], sin[:, 0], latent, k_rope, lengths)
    w_uk, w_uv = attn._split_kv_b()
    ctx = native.mla_attend_rows(torch.bmm(q_nope, w_uk.float()), q_rope, latent, k_rope, lengths, attn.scaling, width + 1)
    out = torch.bmm(ctx, w_uv.float().transpose(1, 2)).transpose(0, 1)  # [B, H, v]
    return module_linear(modules["dense"], out.reshape(x.shape[0], 1, -1).to(x.dtype))


def _mla_block_native(layer, h, cos, sin, latent, k_rope, width: int) -> torch.Tensor | None:
    """h + the layer's MLA attention of RMSNorm(h) for one float32 row (its length is `width`), in
    one native call (kpop.rollout.builtin.native.mla_layer_row: projections and the cache write
    included), or None where the layer does not qualify (kpop.rollout.builtin.row_plan.mla_qualifies,
    or another dtype)."""
    attn, norm = layer.attention, layer.input_layernorm
    if not mla_qualifies(attn):
        return None
    modules = attn._modules
    linears = [modules[name] for name in ("q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "dense")]
    q_w, kv_a_w, kv_b, dense_w = (lin._parameters["weight"] for lin in linears)
    w_qkva = packed(attn, "q_kv_a.weight", [q_w, kv_a_w], row_layout)  # the tensor `fused_linear` multiplies by
    kv_norm = modules["kv_a_layernorm"]
    if not native.fits(h, norm.weight, w_qkva, kv_norm.weight, cos, sin, latent, k_rope, kv_b, dense_w):
        return None
    return native.mla_layer_row(
        h.reshape(-1), norm.weight, eps_of(norm), w_qkva, kv_norm.weight, eps_of(kv_norm), cos.reshape(-1),
        sin.reshape(-1), latent[0], k_rope[0], width, kv_b, attn.scaling, dense_w, attn.num_heads, attn.nope,
        attn.rope, attn.v_dim,
    ).view(h.shape)


def _neox(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`apply_neox_partial` on x [..., B, H, d] with cos/sin [B, 1, rot/2] (q and k stacked: one call)."""
    half = cos.shape[-1]
    xf = x.float()
    x1, x2, rest = xf[..., :half], xf[..., half : 2 * half], xf[..., 2 * half :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1).to(x.dtype)


def adapter_for(model):
    from kpop.models.hybrid.modeling import BailingMoeV2_5ForCausalLM
    from kpop.rollout.builtin.kv_adapter import KVAdapter

    return HybridAdapter(model) if isinstance(model, BailingMoeV2_5ForCausalLM) else KVAdapter(model)
