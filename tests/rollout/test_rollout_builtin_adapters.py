"""The built-in engine's decode paths against the model's own full forward, logits row by row.

Rows of ragged lengths share a `SlotCache` (each at its own length, the cache growing mid-run);
every decode step's logits must equal those of a full forward pass (no cache) over that row's
context alone. Covers the hybrid path, the direct KV path (Llama, and Qwen3 for its q/k norms)
and the generic KV path (the model's forward over a DynamicCache), in float32 and bfloat16.
"""

from __future__ import annotations

import pytest
import torch

from kpop.rollout.builtin.adapters import adapter_for
from kpop.rollout.builtin.slots import CacheSpec, SlotCache

PROMPT_LENS = [3, 20, 9, 1]
STEPS = 14  # widths 20 -> 34: the cache grows from 32 to 64 columns mid-run


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@torch.inference_mode()
def _run(adapter, contexts: list[list[int]], past_lengths: float | None = None) -> list[torch.Tensor]:
    """Prefill each row alone, then decode all rows together; logits [B, V] of each step.
    `past_lengths`: a value written into every cached column past each row's length first."""
    cache, lengths = None, []
    for row, (ctx, p) in enumerate(zip(contexts, PROMPT_LENS)):
        _, state = adapter.prefill(torch.tensor([ctx[:p]]))
        if cache is None:
            specs = [CacheSpec(tuple(t.shape[1:]), d, t.dtype) for t, d in zip(state, adapter.col_dims)]
            cache = SlotCache(specs, max_rows=len(contexts), max_cols=128)
        cache.ensure(row + 1, p)
        cache.write_rows(row, state)
        lengths.append(p)
    if past_lengths is not None:
        for t, col_dim in zip(cache.tensors, adapter.col_dims):
            for row, n in enumerate(lengths):
                if col_dim is not None:
                    t[row].narrow(col_dim, n, t.shape[1 + col_dim] - n).fill_(past_lengths)
    steps = []
    for _ in range(STEPS):
        width = max(lengths)
        cache.ensure(len(contexts), width + 1)
        tokens = torch.tensor([ctx[n] for ctx, n in zip(contexts, lengths)])
        steps.append(adapter.decode(cache.tensors, torch.tensor(lengths), width, tokens).float())
        lengths = [n + 1 for n in lengths]
    assert cache.col_cap == 64
    return steps


def _worst_vs_forward(model, contexts, got) -> float:
    worst = 0.0
    with torch.inference_mode():
        for step, logits in enumerate(got):
            for row, (ctx, p) in enumerate(zip(contexts, PROMPT_LENS)):
                ref = model(torch.tensor([ctx[: p + step + 1]])).logits[0, -1].float()
                worst = max(worst, (ref - logits[row]).abs().max().item())
    return worst


@pytest.mark.parametrize("which", ["hybrid", "llama"])
def test_columns_past_each_length_do_not_leak_into_decoding(which, tiny_model):
    from kpop.rollout.builtin.kv_adapter import attention_span

    # widths 20 -> 33 in a 32-column cache at first: several-row steps attend over all of it
    assert attention_span(max(PROMPT_LENS) + 1, 32) == 32 and attention_span(9, 32) == 9
    model = tiny_model(which)
    gen = torch.Generator().manual_seed(2)
    contexts = [torch.randint(0, 320, (p + STEPS,), generator=gen).tolist() for p in PROMPT_LENS]
    got = _run(adapter_for(model), contexts, past_lengths=1e4)
    assert _worst_vs_forward(model, contexts, got) < 1e-4


def _worst_on_or_off_the_kernels(model, use_native: bool, seed: int) -> float:
    """`_worst_vs_forward` of ragged rows (columns past each length filled with 1e4) decoded with the
    native kernels on, or switched off."""
    from kpop.rollout.builtin import native

    gen = torch.Generator().manual_seed(seed)
    contexts = [torch.randint(0, 320, (p + STEPS,), generator=gen).tolist() for p in PROMPT_LENS]
    if use_native:
        got = _run(adapter_for(model), contexts, past_lengths=1e4)
    else:
        with native.switched_off():
            got = _run(adapter_for(model), contexts, past_lengths=1e4)
    return _worst_vs_forward(model, contexts, got)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 0.03)])
@pytest.mark.parametrize("which", ["hybrid", "hybrid-qlora", "llama", "qwen3", "generic"])
def test_decode_logits_equal_full_forward(which, dtype, tol, tiny_model):
    """bf16: against the float32 forward of the same (bf16-valued) weights. The paths round at
    different places (the native kernels keep float32 between stored values, torch's ops round
    every op), so each lands a few bf16 steps (2^-6 at these logits) from the other's forward."""
    model = tiny_model("llama" if which == "generic" else which).to(dtype)
    reference = model
    if dtype != torch.float32:
        reference = type(model)(model.config).eval()
        reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    adapter = adapter_for(model)
    if which == "generic":
        adapter.direct = False
    elif not which.startswith("hybrid"):
        assert adapter.direct  # Llama and Qwen3 take the direct path by default
    gen = torch.Generator().manual_seed(1)
    contexts = [torch.randint(0, 320, (p + STEPS,), generator=gen).tolist() for p in PROMPT_LENS]
    got = _run(adapter, contexts)
    worst = _worst_vs_forward(reference, contexts, got)
    print(f"\n[{which} {dtype}] max |decode logits - full forward logits| = {worst:.3g}")
    assert worst < tol


def test_slot_cache_moves_rows_and_releases():
    cache = SlotCache([CacheSpec((4, 2), 0, torch.float32), CacheSpec((3,), None, torch.float32)], max_rows=4, max_cols=64)
    cache.ensure(3, 4)
    cache.write_rows(0, [torch.arange(3 * 4 * 2.0).view(3, 4, 2), torch.arange(9.0).view(3, 3)])
    cache.ensure(3, 40)  # growth keeps the contents
    cache.move_row(2, 0, cols=4)
    assert torch.equal(cache.tensors[0][0, :4], torch.arange(16.0, 24.0).view(4, 2))
    assert torch.equal(cache.tensors[1][0], torch.tensor([6.0, 7.0, 8.0]))
    with pytest.raises(ValueError, match="exceeds"):
        cache.ensure(5, 4)
    cache.release()
    assert cache.nbytes() == 0


def test_slot_cache_reserves_columns_when_it_reallocates():
    cache = SlotCache([CacheSpec((2,), 0, torch.float32)], max_rows=4, max_cols=100)
    cache.ensure(2, 8, reserve_cols=40)
    assert cache.col_cap == 40
    cache.ensure(2, 40, reserve_cols=90)  # fits: nothing reallocated
    assert cache.col_cap == 40
    cache.ensure(2, 41, reserve_cols=500)
    assert cache.col_cap == 100  # never past max_cols


@pytest.mark.parametrize("max_tokens,max_model_len,reserved", [(30, 128, 38), (64, 512, 72), (400, 512, 256)])
def test_scheduler_allocates_the_cache_once_for_what_its_sequences_can_reach(max_tokens, max_model_len, reserved):
    """8-token prompts: the cache reserves prompt + max_tokens columns (64 tokens: 72, past 8x the
    prompt), never more than `RESERVE_FLOOR` (256) at once for a prompt this short."""
    from kpop.rollout.builtin.sampling import new_generator
    from kpop.rollout.builtin.scheduler import Scheduler, Sequence
    from kpop.rollout.builtin.tiny_models import tiny_hybrid
    from kpop.rollout.engine import SamplingParams

    scheduler = Scheduler(adapter_for(tiny_hybrid(seed=0)), max_batch=4, max_model_len=max_model_len)
    params = SamplingParams(temperature=1.0, max_tokens=max_tokens)
    for i in range(3):
        scheduler.submit(Sequence(f"r{i}", [1, 2 + i, 3, 4, 5, 6, 7, 8], params, new_generator(i), frozenset(), arrival=i))
    scheduler.step(0)
    tensors, caps = scheduler.cache.tensors, scheduler.cache.col_cap
    assert caps == reserved
    while scheduler.running and max(scheduler.lengths) + 1 < reserved:
        assert scheduler.cache.tensors is tensors  # no reallocation while the reserve lasts
        scheduler.step(0)
    assert max_tokens > 256 or not scheduler.running


def _decode_matches_forward(tiny_model, which: str, seed: int, calls: list, min_calls_per_layer_step: int) -> None:
    """Ragged rows decoded together equal each row's full forward (1e-4), and the patched kernel
    was called at least `min_calls_per_layer_step` times per layer and step."""
    model = tiny_model(which)
    gen = torch.Generator().manual_seed(seed)
    contexts = [torch.randint(0, 320, (p + STEPS,), generator=gen).tolist() for p in PROMPT_LENS]
    got = _run(adapter_for(model), contexts)
    assert len(calls) >= STEPS * model.config.num_hidden_layers * min_calls_per_layer_step
    with torch.inference_mode():
        for step, logits in enumerate(got):
            for row, (ctx, p) in enumerate(zip(contexts, PROMPT_LENS)):
                ref = model(torch.tensor([ctx[: p + step + 1]])).logits[0, -1]
                torch.testing.assert_close(logits[row], ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("which", ["hybrid", "llama"])
def test_decode_through_chunked_linears_equals_full_forward(which, monkeypatch, tiny_model):
    """Every float32 linear of the tiny models through the row-chunked `bmm` (the medium models'
    one-row path; oneDNN switched off)."""
    from kpop.rollout.builtin import matmul, onednn

    calls = []
    chunked = matmul.chunked
    monkeypatch.setattr(matmul, "MIN_NUMEL", 0)
    monkeypatch.setattr(onednn, "available", lambda: False)
    monkeypatch.setattr(matmul, "chunked", lambda *a, **k: calls.append(1) or chunked(*a, **k))
    _decode_matches_forward(tiny_model, which, 2, calls, 3)


@pytest.mark.parametrize("which", ["llama", "hybrid"])
def test_decode_through_onednn_linears_equals_full_forward(which, monkeypatch, tiny_model):
    """Every linear of the tiny models' several-row steps through oneDNN over prepacked weights
    (the medium models' path at 2+ rows)."""
    from kpop.rollout.builtin import matmul, onednn

    if not onednn.available():
        pytest.skip("this torch build has no oneDNN linear ops")
    calls = []
    packed_linear = onednn.linear
    monkeypatch.setattr(matmul, "MIN_NUMEL", 0)
    monkeypatch.setattr(onednn, "linear", lambda *a, **k: calls.append(1) or packed_linear(*a, **k))
    _decode_matches_forward(tiny_model, which, 3, calls, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_rope_as_a_roll_is_transformers_rotate_half_bit_for_bit(dtype):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from kpop.rollout.builtin.kv_adapter import _rope

    torch.manual_seed(0)
    q, k = torch.randn(3, 4, 16, dtype=dtype), torch.randn(3, 2, 16, dtype=dtype)  # [B, heads, D]
    angles = torch.rand(3, 1, 8) * 50
    cos, sin = torch.cat([angles.cos()] * 2, -1).to(dtype), torch.cat([angles.sin()] * 2, -1).to(dtype)
    want_q, want_k = apply_rotary_pos_emb(q, k, cos[:, 0], sin[:, 0], unsqueeze_dim=1)  # cos [B, D] -> [B, 1, D]
    signed_sin = torch.cat([-sin[..., :8], sin[..., 8:]], -1)
    got = _rope(torch.cat([q, k], 1), cos, signed_sin)
    assert torch.equal(got[:, :4], want_q) and torch.equal(got[:, 4:], want_k)


@pytest.mark.parametrize("which", ["llama", "qwen3", "qwen2-bias"])
def test_direct_prefill_equals_the_models_forward(which, tiny_model):
    """The direct path's prefill (packed products, causal SDPA) gives the last position's logits
    and every layer's rotated keys and values that transformers' forward gives, for several
    prompts at once: grouped heads, Qwen3's q/k norms, Qwen2's q|k|v biases."""
    from transformers import AutoModelForCausalLM, DynamicCache, Qwen2Config

    if which == "qwen2-bias":
        torch.manual_seed(0)
        config = Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
        model = AutoModelForCausalLM.from_config(config).eval()
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.bias.normal_()  # zeros at init: make them matter
    else:
        model = tiny_model(which)
    adapter = adapter_for(model)
    assert adapter.direct
    ids = torch.randint(0, 320, (3, 13), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        logits, state = adapter.prefill(ids)
        out = model(ids, past_key_values=DynamicCache(), use_cache=True)
    torch.testing.assert_close(logits, out.logits[:, -1], rtol=0, atol=1e-5)
    want = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
    assert len(state) == len(want)
    for got, expected in zip(state, want):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("use_native", [True, False])
def test_hybrid_several_rows_on_the_kernels_and_on_torch_ops(use_native, monkeypatch, tiny_model):
    """Several hybrid rows (columns past each length filled with 1e4) equal the full forward with the
    MLA and MoE work between products native (each MLA layer's prep and attention, each MoE layer's
    dispatch and combine: one call per layer and step) and with the kernels off (none)."""
    from kpop.rollout.builtin import native

    if use_native and not native.available():
        pytest.skip("no C compiler: the native kernels are not built")
    calls: dict[str, int] = {}
    for name in ("mla_prep_rows", "mla_attend_rows", "moe_dispatch", "moe_combine"):
        kernel = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _k=kernel, _n=name, **kw: calls.update({_n: calls.get(_n, 0) + 1}) or _k(*a, **kw))
    model = tiny_model("hybrid")
    assert _worst_on_or_off_the_kernels(model, use_native, seed=6) < 1e-4
    mla = sum(model.config.is_mla_layer(i) for i in range(model.config.num_hidden_layers))
    moe = sum(type(layer.mlp).__name__ == "MoE" for layer in model.model.layers[: model.config.num_hidden_layers])
    assert mla and moe
    if use_native:
        assert calls["mla_prep_rows"] == calls["mla_attend_rows"] == STEPS * mla
        assert calls["moe_combine"] >= STEPS * moe  # and the prefills of prompts of several tokens
    else:
        assert not calls


@pytest.mark.parametrize("rows", [1, 3])
def test_hybrid_prefill_equals_the_models_forward(rows, tiny_model):
    """The hybrid adapter's prefill (its own loop over the decoder layers: MoE through
    `moe_forward`, fused norms, the head on the last position) gives the last position's logits and
    every layer's state (Lightning [H, d, d], MLA latent and rotated key) that the model's forward
    with a cache gives."""
    model = tiny_model("hybrid")
    adapter = adapter_for(model)
    ids = torch.randint(0, 320, (rows, 13), generator=torch.Generator().manual_seed(rows))
    with torch.inference_mode():
        logits, state = adapter.prefill(ids)
        out = model(ids, past_key_values=model.new_cache(), use_cache=True)
    torch.testing.assert_close(logits, out.logits[:, -1], rtol=0, atol=1e-5)
    want = [t for mla, entry in zip(adapter.is_mla, out.past_key_values.layers)
            for t in ((entry.latent, entry.k_rope) if mla else (entry,))]
    assert len(state) == len(want) and any(adapter.is_mla) and not all(adapter.is_mla)
    for got, expected in zip(state, want):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("use_native", [True, False])
@pytest.mark.parametrize("which", ["llama", "qwen3"])
def test_direct_kv_decode_with_and_without_the_native_attention(which, use_native, threads, monkeypatch, tiny_model):
    """float32 direct KV decoding of ragged rows (columns past each length filled with 1e4) equals
    the full forward on either attention path: native (the Llama's steps through its several-row
    plan, kpop.rollout.builtin.kv_rows_plan; Qwen3's, whose q/k norms the plan does not take,
    through `native.kv_attend` once per layer and step), or torch's ops (neither) when the kernels
    are off."""
    from kpop.rollout.builtin import native
    from kpop.rollout.builtin.kv_adapter import KVAdapter

    if use_native and not native.available():
        pytest.skip("no C compiler: the native kernels are not built")
    torch.set_num_threads(threads)
    calls, kernel, planned, decode_rows = [], native.kv_attend, [], KVAdapter._decode_rows
    monkeypatch.setattr(native, "kv_attend", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    monkeypatch.setattr(KVAdapter, "_decode_rows", lambda *a: planned.append(1) or decode_rows(*a))
    model = tiny_model(which)
    assert _worst_on_or_off_the_kernels(model, use_native, seed=3) < 1e-4
    native_steps = STEPS if use_native else 0
    assert len(planned) == (native_steps if which == "llama" else 0)
    assert len(calls) == (native_steps * model.config.num_hidden_layers if which == "qwen3" else 0)
