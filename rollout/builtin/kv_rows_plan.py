"""`KVAdapter`'s several-row decode with each layer's arguments looked up once (kpop.rollout.builtin.
row_plan's idea for B > 1 rows of a Llama-like model).

Why: at 64 bf16 rows a medium Llama step (~40 ms) is ~27 ms of products and ~6 ms of attention;
much of the rest was the Python around them, per layer and step: module attribute lookups, the
packed-weight and dtype checks of `fused_output` / `gated_mlp`, `native.fits` before every norm and
SwiGLU, the attention wrapper's shape checks and its scratch. A plan does that once; a step then
runs, per layer, the native RMSNorm into a buffer the step shares, the q|k|v product (`project`:
oneDNN over the prepacked weight, whose copy it refreshes after an in-place update), the native
attention (`kpop_kv_attend`, scratch shared by the step's layers), the output product and the
residual; then the native RMSNorm, the gate|up product, the native SwiGLU, the down product and
the residual. Medium Llama in one process, against the per-layer path: 64 bf16 rows 32.0-35.1 ms
a step against 35.2-40.8 (three blocks of four generations each way, ~0.93x); 8 alternating
pairs, 64 float32 rows 0.97x, 16 bf16 rows 0.93x.

Contract: `kv_rows_plan(adapter)` is a `RowPlan` whose `attention[i](h, keys, values, step)` and
`feed_forward[i](h, step)` map h [B, hidden] (B >= 2) to what `KVAdapter._direct` computes with
the native attention: the same kernels and products in the same order, so the same values bit
for bit. None where `kv_row_plan` declines a model (the direct path not in use, a dtype other than
float32 and bfloat16, q/k norms, biased or non-plain projections, a non-SiLU MLP, RoPE over part
of the head). `KVRowsStep` is the step's shared state; where `KVRowsStep.fits` is False (caches
that are not contiguous tensors of the plan's dtype, lengths not int64) the adapter keeps
`_direct`. Validity: as in row_plan, checked at every prefill against the modules' parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kpop.rollout.builtin import native
from kpop.rollout.builtin.gated_mlp import swiglu_weights
from kpop.rollout.builtin.kv_row_plan import attention_heads, layers_plan
from kpop.rollout.builtin.matmul import project
from kpop.rollout.builtin.norms import eps_of
from kpop.rollout.builtin.packed import packed, rows
from kpop.rollout.builtin.row_plan import NotNative, RowPlan, guard


def kv_rows_plan(adapter) -> RowPlan | None:
    plan = layers_plan(adapter, _attention, _feed_forward)
    return None if plan is None else plan.seal()


class KVRowsStep:
    """One step's shared state: the rows' lengths (int64) and the widest (`width`), their RoPE
    tables (float32 [B, d], the model's rotary module at each row's position), the thread count,
    the normed-input buffer and the attention's scratch (grown to the largest layer's need)."""

    def __init__(self, plan: RowPlan, inner, lengths: torch.Tensor, width: int, hidden: int) -> None:
        B = lengths.shape[0]
        cos, sin = inner.rotary_emb(torch.zeros(1, 1, 1), lengths[:, None])  # [B, 1, d], float32
        self.cos, self.sin = cos.reshape(B, -1).contiguous(), sin.reshape(B, -1).contiguous()
        self.lengths, self.width, self.rows, self.threads = lengths.contiguous(), width, B, torch.get_num_threads()
        self.x = torch.empty(B, hidden, dtype=plan.dtype)
        self._scratch = torch.empty(0)

    @staticmethod
    def fits(plan: RowPlan, tensors: list[torch.Tensor], lengths: torch.Tensor) -> bool:
        return lengths.dtype == torch.int64 and native.fits(*tensors, dtype=plan.dtype)

    def scratch(self, floats: int) -> torch.Tensor:
        if self._scratch.numel() < floats:
            self._scratch = torch.empty(floats)
        return self._scratch


@guard
def _attention(plan: RowPlan, layer, rotary: int) -> Callable:
    attn, norm = layer.self_attn, layer.input_layernorm
    d, heads, kv_heads = attention_heads(attn, rotary)
    qkv_params = [plan.watch(lin) for lin in (attn.q_proj, attn.k_proj, attn.v_proj)]
    w_qkv, w_o = packed(attn, "qkv.weight", qkv_params, rows), plan.watch(attn.o_proj)
    p_norm = plan.hold(plan.watch(norm), w_qkv, w_o)[0]
    rms, attend = plan.kernel("kpop_rms_norm"), plan.kernel("kpop_kv_attend")
    norm_eps, scale, group, hidden, o_proj = eps_of(norm), attn.scaling, heads // kv_heads, attn.o_proj.out_features, attn.o_proj
    widened = (2 * group + 2) * d if plan.dtype != torch.float32 else 0  # kv_attend's float copies per task

    def run(h: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, step: KVRowsStep) -> torch.Tensor:
        B, x, h = step.rows, step.x, h.contiguous()
        rms(h.data_ptr(), p_norm, x.data_ptr(), B, hidden, norm_eps, step.threads)
        qkv = project(x, w_qkv, None, attn, "qkv", qkv_params).contiguous()  # the row-chunked `bmm`'s is not
        o = torch.empty(B, heads * d, dtype=plan.dtype)
        columns = step.width + 1
        scratch = step.scratch(B * kv_heads * (group * (columns + d) + widened))
        attend(qkv.data_ptr(), qkv.shape[1], step.cos.data_ptr(), step.sin.data_ptr(), keys.data_ptr(), values.data_ptr(),
               step.lengths.data_ptr(), o.data_ptr(), scratch.data_ptr(), B, heads, kv_heads, d, keys.shape[2], columns,
               scale, step.threads)
        return h + project(o, w_o, None, o_proj, "weight", (w_o,))

    return run


@guard
def _feed_forward(plan: RowPlan, layer) -> Callable:
    mlp, norm = layer.mlp, layer.post_attention_layernorm
    if swiglu_weights(mlp) is None:
        raise NotNative
    gu_params = [plan.watch(lin) for lin in (mlp.gate_proj, mlp.up_proj)]
    w_gu, w_down = packed(mlp, "gate_up.weight", gu_params, rows), plan.watch(mlp.down_proj)
    p_norm = plan.hold(plan.watch(norm), w_gu, w_down)[0]
    rms, swiglu = plan.kernel("kpop_rms_norm"), plan.kernel("kpop_swiglu")
    hidden, width, norm_eps, down = mlp.down_proj.out_features, mlp.down_proj.in_features, eps_of(norm), mlp.down_proj

    def run(h: torch.Tensor, step: KVRowsStep) -> torch.Tensor:
        B, x, h = step.rows, step.x, h.contiguous()
        rms(h.data_ptr(), p_norm, x.data_ptr(), B, hidden, norm_eps, step.threads)
        gate_up = project(x, w_gu, None, mlp, "gate_up", gu_params).contiguous()
        act = torch.empty(B, width, dtype=plan.dtype)
        swiglu(gate_up.data_ptr(), act.data_ptr(), B, width, step.threads)
        return h + project(act, w_down, None, down, "weight", (w_down,))

    return run
