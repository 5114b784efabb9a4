"""The machine's decode limits for a model, measured here: what `benchmarks/engine.py` compares to.

The workload is the benchmark's: `batch` prompts of `prompt_len` tokens, `max_tokens` generated
each (the first by the prefill, the others by `max_tokens - 1` decode steps).
- Batch 1 (bandwidth-bound): a token reads every weight it uses once, so the limit is
  `bandwidth / (weight + state bytes per token)`. Weight bytes: every linear layer's weight (the
  lm_head included, the embedding table not: a token reads one row of it), routed MoE experts
  counted top-k of E. Bandwidth: `weight_read_bandwidth`, the best of several passes that `sum()`
  each of those weights once in forward order: the model's own tensors where they lie (huge
  pages, as the engine's: kpop.rollout.builtin.hugepages), in the pieces a step must read them in
  (a layer's read waits for the layer before it). benchmarks/engine.py samples it right before
  and after each batch-1 run and judges a run against the better of its two samples. One long
  stream (`read_bandwidth`: `sum()` over a 128 MiB buffer) reads faster and moves more on this
  shared box (34-90 GB/s from minute to minute, while the model-sized tensors read at 31-59);
  it is printed beside, with the share of it the engine reaches.
- Batch B > 1 (compute-bound): the time of the batch's matmuls, prefill included:
  `pass(B * prompt_len) + (max_tokens - 1) * pass(B)`, where `pass(rows)` runs one forward's
  linear layers in the model's order on their own weights (`rows` x in by each [out, in] weight
  of the loaded model, so every weight comes from memory as in a real step, not from a cache a
  repeated shape would keep it in). Routed experts: a balanced router feeds min(E, rows*k) of
  each layer's experts, ceil(rows*k / fed) rows each. Each layer takes the fastest of `F.linear`,
  the row-chunked `bmm` and oneDNN over a prepacked copy of the weight, the forms the built-in
  engine uses (kpop.rollout.builtin.matmul, .onednn: no engine is measured against a limit its
  own kernels beat), each layer's call timed on its own, best of several passes per form. FLOPs
  counted: 2 x rows x in x out per linear.
- Decoding state (every batch): a step also reads what the rows have cached and rewrites any
  fixed-size state, at the weights' read bandwidth: `state_bytes` -- per row, every cached
  column of a growing cache (keys/values, MLA latents: the step attends over all of them) read
  and the new column written, and a fixed state (the hybrid's Lightning [H, d, d]) read and
  written once. The shapes and dtypes are those of the model's cache as the engine keeps it (its
  adapter's prefill state, kpop.rollout.builtin.adapters: keys/values; MLA's latent and rotated
  key; the Lightning state in float32). At batch 1 this adds ~1-2% to the weight bytes; at 64
  rows the medium Llama's keys/values average ~2/3 of its weight bytes per step and the medium
  hybrid's states ~half of all its weights' bytes in float32 (as many in bf16). Kernels are
  taken to run one after another (matmul time + state time): no overlap of a compute-bound
  matmul with a memory-bound read is assumed.
The router, norms, RoPE, softmax and sampling are left out: the limits are upper bounds the engine
cannot reach. `Limits.tokens_per_s` takes a sample taken beside a run in place of the one taken at
the start: the bandwidth at batch 1, one decode step's pass at larger batches (the prefill's pass
and the state's traffic stay those of the start).
Timings take the best of several runs, so a noisy machine yields optimistic (high) limits.
`hot_step_s` also times each batch-B shape on its own, repeated (its weight stays in cache): the
bound an earlier version of this benchmark used, printed for comparison.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Linear:
    weight: torch.Tensor
    expert: int | None = None  # index in its layer's routed experts
    experts: int = 1           # routed: one of `experts`, `top_k` of which each token uses
    top_k: int = 1

    @property
    def fan_out(self) -> int:
        return self.weight.shape[0]

    @property
    def fan_in(self) -> int:
        return self.weight.shape[1]

    def rows(self, batch_rows: int) -> int:
        """Rows this layer multiplies when the step has `batch_rows` rows; 0 if it is not fed."""
        if self.expert is None:
            return batch_rows
        fed = min(self.experts, batch_rows * self.top_k)
        return math.ceil(batch_rows * self.top_k / fed) if self.expert < fed else 0


def model_linears(model) -> list[Linear]:
    """The decode-time linear layers of `model` in forward order (MTP layers of the hybrid excluded:
    unused when decoding)."""
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    experts, top_k = getattr(cfg, "num_experts", None) or 1, getattr(cfg, "num_experts_per_tok", None) or 1
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        parts = name.split(".")
        if "layers" in parts and int(parts[parts.index("layers") + 1]) >= n_layers:
            continue
        if "experts" in parts:
            out.append(Linear(module.weight.detach(), int(parts[parts.index("experts") + 1]), experts, top_k))
        else:
            out.append(Linear(module.weight.detach()))
    return out


def read_bandwidth(mib: int = 128, repeats: int = 30) -> float:
    """Bytes per second of one long streaming read (best of `repeats` `sum()` passes over a `mib` MiB
    buffer on huge pages): printed beside the limit, which reads the model's own weights instead."""
    from kpop.rollout.builtin import hugepages

    buf = hugepages.empty((mib * 2**20 // 4,), torch.float32).fill_(1.0)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - start)
    return buf.nbytes / best


def token_weights(linears: list[Linear]) -> list[torch.Tensor]:
    """The weights one decoded token reads, in forward order (routed experts: the first top-k)."""
    return [lin.weight for lin in linears if lin.rows(1)]


def weight_read_bandwidth(weights: list[torch.Tensor], repeats: int = 10) -> float:
    """Bytes per second of reading `weights` once each in order with `sum()` (best of `repeats`
    passes): a batch-1 decode step's minimum memory work, in the pieces the model stores it in."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for w in weights:
            w.sum()
        best = min(best, time.perf_counter() - start)
    return sum(w.nbytes for w in weights) / best


def _forms(lin: Linear) -> list:
    """The product's forms the engine can use for this layer: F.linear, the row-chunked `bmm`
    (kpop.rollout.builtin.matmul.chunked) and oneDNN over a prepacked copy of the weight
    (kpop.rollout.builtin.onednn; packed here, outside the timing)."""
    from kpop.rollout.builtin import onednn
    from kpop.rollout.builtin.matmul import CHUNKS, chunked

    forms = [F.linear] + ([chunked] if lin.fan_out % CHUNKS == 0 else [])
    if onednn.available():
        packed = torch.ops.mkldnn._reorder_linear_weight(lin.weight, onednn.BATCH_HINT)
        forms.append(lambda x, _w: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""))
    return forms


def pass_time(linears: list[Linear], batch_rows: int, repeats: int = 5) -> tuple[float, float]:
    """(seconds, FLOPs) of one forward's matmuls at `batch_rows` rows, weights read in model order."""
    fed = [(lin, lin.rows(batch_rows)) for lin in linears]
    fed = [(lin, rows, _forms(lin)) for lin, rows in fed if rows]
    inputs = {(rows, lin.fan_in, lin.weight.dtype): torch.randn(rows, lin.fan_in).to(lin.weight.dtype) for lin, rows, _ in fed}
    best = [float("inf")] * len(fed)
    for _ in range(repeats):
        for form in range(max(len(forms) for _, _, forms in fed)):  # a whole pass per form: weights come cold
            for i, (lin, rows, forms) in enumerate(fed):
                if form < len(forms):
                    x = inputs[rows, lin.fan_in, lin.weight.dtype]
                    start = time.perf_counter()
                    forms[form](x, lin.weight)
                    best[i] = min(best[i], time.perf_counter() - start)
    flops = sum(2 * rows * lin.fan_in * lin.fan_out for lin, rows, _ in fed)
    return sum(best), flops


def hot_step_s(linears: list[Linear], batch: int, repeats: int = 40) -> float:
    """Seconds of one decode step's matmuls with each shape timed alone, repeated (weights hot)."""
    seconds, times = 0.0, {}
    for lin in linears:
        rows = lin.rows(batch)
        if not rows:
            continue
        key = (rows, lin.fan_in, lin.fan_out)
        if key not in times:
            x, w = torch.randn(rows, lin.fan_in).to(lin.weight.dtype), lin.weight
            best = float("inf")
            for form in _forms(lin):
                form(x, w)
                for _ in range(repeats):
                    start = time.perf_counter()
                    form(x, w)
                    best = min(best, time.perf_counter() - start)
            times[key] = best
        seconds += times[key]
    return seconds


@dataclass(frozen=True)
class StateShape:
    """Per row: bytes of one cached column summed over the growing caches, bytes of the fixed states."""

    column_bytes: int
    fixed_bytes: int

    def step_bytes(self, columns: int) -> int:
        """A decode step over `columns` columns (the new one included): all of them read, the new
        one written; the fixed states read and written."""
        return self.column_bytes * (columns + 1) + 2 * self.fixed_bytes


def state_shape(model) -> StateShape:
    """The decoding state the built-in engine keeps per row for `model` (its adapter's prefill state)."""
    from kpop.rollout.builtin.adapters import adapter_for

    adapter = adapter_for(model)
    ids = torch.ones(1, 2, dtype=torch.long, device=next(model.parameters()).device)
    _, state = adapter.prefill(ids)
    column = fixed = 0
    for t, col_dim in zip(state, adapter.col_dims):
        row_bytes = t[0].numel() * t.element_size()
        if col_dim is None:
            fixed += row_bytes
        else:
            column += row_bytes // t.shape[1 + col_dim]
    return StateShape(column, fixed)


def state_bytes(shape: StateShape, batch: int, prompt_len: int, max_tokens: int) -> int:
    """State traffic of the generation's decode steps: step s (1..max_tokens-1) attends over
    prompt_len + s columns."""
    return batch * sum(shape.step_bytes(prompt_len + s) for s in range(1, max_tokens))


@dataclass(frozen=True)
class Limits:
    bandwidth: float                       # bytes/s
    bytes_per_token: float                 # weights + state, batch 1
    state_s: dict[int, float]              # batch -> seconds of state traffic at `bandwidth`
    prompt_len: int
    max_tokens: int
    seconds: dict[int, float]              # batch -> matmul seconds of the whole generation
    flops: dict[int, float]
    hot_tokens_per_s: dict[int, float]     # batch -> the earlier, hot-shape bound (decode steps only, no state)
    step_s: dict[int, float] = field(default_factory=dict)  # batch -> one decode step's pass (in `seconds`)

    def tokens_per_s(self, batch: int, bandwidth: float | None = None, step_s: float | None = None) -> float:
        """The limit at `batch`; batch 1 at `bandwidth` if given, a larger batch with its decode
        steps' pass taking `step_s` if given (samples taken beside a run)."""
        if batch == 1:
            return (bandwidth or self.bandwidth) / self.bytes_per_token
        return batch * self.max_tokens / (self._seconds(batch, step_s) + self.state_s[batch])

    def _seconds(self, batch: int, step_s: float | None) -> float:
        if step_s is None:
            return self.seconds[batch]
        return self.seconds[batch] + (self.max_tokens - 1) * (step_s - self.step_s[batch])

    def describe(self, batch: int, bandwidth: float | None = None, step_s: float | None = None) -> str:
        if batch == 1:
            return f"{self.bytes_per_token / 1e6:.0f} MB/token, weights read at {(bandwidth or self.bandwidth) / 1e9:.1f} GB/s"
        seconds = self._seconds(batch, step_s)
        return (
            f"{self.flops[batch] / 1e9:.1f} GFLOP, prefill included, at {self.flops[batch] / seconds / 1e9:.0f} GFLOP/s "
            f"+ state {self.state_s[batch]:.2f} s; hot-shape bound {self.hot_tokens_per_s[batch]:.0f} tok/s"
        )


def measure_limits(model, batches: list[int], bandwidth: float, prompt_len: int, max_tokens: int) -> Limits:
    linears = model_linears(model)
    shape = state_shape(model)
    seconds, flops, hot, state_s, steps = {}, {}, {}, {}, {}
    for b in batches:
        state_s[b] = state_bytes(shape, b, prompt_len, max_tokens) / bandwidth
        if b > 1:
            prefill_s, prefill_flops = pass_time(linears, b * prompt_len)
            steps[b], step_flops = pass_time(linears, b)
            seconds[b] = prefill_s + (max_tokens - 1) * steps[b]
            flops[b] = prefill_flops + (max_tokens - 1) * step_flops
            hot[b] = b / hot_step_s(linears, b)
    per_token = sum(w.nbytes for w in token_weights(linears)) + state_bytes(shape, 1, prompt_len, max_tokens) / max_tokens
    return Limits(bandwidth, per_token, state_s, prompt_len, max_tokens, seconds, flops, hot, steps)
