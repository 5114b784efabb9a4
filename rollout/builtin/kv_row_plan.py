"""`KVAdapter`'s one-row decode as prepared native calls (kpop.rollout.builtin.row_plan's idea for
Llama-like models): per layer one call for the attention block (RMSNorm, the q|k|v product, RoPE,
the cache write, attention over the row's columns, the output product, the residual) and one
for the MLP block (RMSNorm, SwiGLU with both products, the residual), their products' rows and
the key heads spread over torch's threads.

Contract: `kv_row_plan(adapter)` is a `RowPlan` whose `attention[i](h, keys, values, step)` and
`feed_forward[i](h, step)` map h [1, 1, hidden] to what the direct path computes (to float32
rounding), or None where some layer does not qualify: the direct path is not in use, a dtype
other than float32 and bfloat16, q/k norms (Qwen3), biased or non-plain projections, a non-SiLU
MLP, RoPE over part of the head. Validity as in row_plan: checked at every prefill against the
modules' parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kpop.rollout.builtin import native
from kpop.rollout.builtin.norms import eps_of
from kpop.rollout.builtin.row_plan import NotNative, RowPlan, guard, plain, swiglu_block


def kv_row_plan(adapter) -> RowPlan | None:
    plan = layers_plan(adapter, _attention, swiglu_block)
    if plan is None:
        return None
    inner = adapter.model.model
    plan.ends(inner.embed_tokens, inner.norm, adapter.model.lm_head)
    return plan.seal()


def layers_plan(adapter, attention: Callable, feed_forward: Callable) -> RowPlan | None:
    """An unsealed plan of `attention(plan, layer, rotary)` and `feed_forward(plan, layer)` for
    each of the adapter's layers (rotary: the width RoPE turns), or None where the direct path is
    not in use, the dtype is neither float32 nor bfloat16, or a builder declines a layer."""
    if not adapter.direct:
        return None
    inner = adapter.model.model
    probe = torch.zeros(1, 1, adapter.model.config.hidden_size)
    rotary = inner.rotary_emb(probe, torch.zeros(1, 1, dtype=torch.long))[0].shape[-1]
    plan = RowPlan([], [], dtype=inner.embed_tokens.weight.dtype)
    if plan.dtype not in native.DTYPES:
        return None
    for layer in inner.layers[: adapter.num_layers]:
        block, mlp = attention(plan, layer, rotary), feed_forward(plan, layer)
        if block is None or mlp is None:
            return None
        plan.attention.append(block)
        plan.feed_forward.append(mlp)
    return plan


class KVRowStep:
    """One step's shared state: thread count, the row's length (`width`, also its position), the
    RoPE table there (float32 whatever the model's dtype: the kernels take it so). The model's
    rotary module computes it; with the default rope type (no per-length update of its
    frequencies) the plan keeps it per position."""

    def __init__(self, plan: RowPlan, inner, width: int) -> None:
        rotary = inner.rotary_emb

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            return rotary(torch.zeros(1, 1, 1), torch.tensor([[width]]))

        if getattr(rotary, "rope_type", None) == "default":
            _, _, self.cos, self.sin = plan.table(("kv",), width, compute)
        else:
            self._tables = tuple(t.contiguous() for t in compute())  # alive while the step points at them
            self.cos, self.sin = (t.data_ptr() for t in self._tables)
        self.width, self.threads = width, torch.get_num_threads()


def attention_heads(attn, rotary: int) -> tuple[int, int, int]:
    """(head size, query heads, key heads) of an attention module the kernels take: no q/k norms,
    RoPE over the whole (even) head, plain bias-free projections, query heads grouped evenly over
    the key heads; NotNative otherwise."""
    d = attn.head_dim
    if hasattr(attn, "q_norm") or rotary != d or d % 2:
        raise NotNative
    plain(attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)
    heads, kv_heads = attn.q_proj.out_features // d, attn.k_proj.out_features // d
    if heads % kv_heads:
        raise NotNative
    return d, heads, kv_heads


@guard
def _attention(plan: RowPlan, layer, rotary: int) -> Callable:
    attn, norm, kernel = layer.self_attn, layer.input_layernorm, plan.kernel("kpop_attn_layer_row")
    d, heads, kv_heads = attention_heads(attn, rotary)
    p_qkv = plan.packed(attn, "qkv.weight", [attn.q_proj, attn.k_proj, attn.v_proj])
    p_norm, p_o = plan.hold(plan.watch(norm), plan.watch(attn.o_proj))
    hidden, norm_eps, scale, group, dtype = attn.o_proj.out_features, eps_of(norm), attn.scaling, heads // kv_heads, plan.dtype

    def run(h: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, step: KVRowStep) -> torch.Tensor:
        out = torch.empty(hidden, dtype=dtype)
        scratch = torch.empty(hidden + (heads + 2 * kv_heads) * d + heads * d + kv_heads * group * (step.width + 1 + d))
        kernel(h.data_ptr(), p_norm, norm_eps, p_qkv, step.cos, step.sin, keys.data_ptr(), values.data_ptr(), step.width,
               keys.shape[-2], scale, p_o, hidden, heads, kv_heads, d, out.data_ptr(), scratch.data_ptr(), step.threads)
        return out.view(1, 1, hidden)

    return run
