"""The hybrid's one-row plan (kpop.rollout.builtin.row_plan): kept across weight updates copied in
place, rebuilt when parameters get new storage, off under `native.switched_off()`, absent for a
model some layer of which is not fully native; on one and two threads, decoding what the model's
full forward computes."""

from __future__ import annotations

import pytest
import torch

from kpop.rollout.builtin import native
from kpop.rollout.builtin.adapters import HybridAdapter
from kpop.rollout.builtin.row_plan import hybrid_row_plan
from kpop.rollout.builtin.slots import CacheSpec, SlotCache
from kpop.rollout.builtin.tiny_models import tiny_hybrid

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: the native kernels are not built")


def _decode(adapter, model, context: list[int], prompt: int, steps: int) -> None:
    """Prefill, then decode one row for `steps` tokens, each step's logits checked against the full forward."""
    with torch.inference_mode():
        _, state = adapter.prefill(torch.tensor([context[:prompt]]))
        specs = [CacheSpec(tuple(t.shape[1:]), d, t.dtype) for t, d in zip(state, adapter.col_dims)]
        cache = SlotCache(specs, max_rows=1, max_cols=64)
        cache.ensure(1, prompt + steps)
        cache.write_rows(0, state)
        for n in range(prompt, prompt + steps):
            logits = adapter.decode(cache.tensors, torch.tensor([n]), n, torch.tensor([context[n]]))
            want = model(torch.tensor([context[: n + 1]])).logits[0, -1]
            torch.testing.assert_close(logits[0], want, rtol=0, atol=1e-4)


CONTEXT = torch.randint(0, 320, (20,), generator=torch.Generator().manual_seed(5)).tolist()


@pytest.mark.parametrize("threads", [1, 2])
def test_a_weight_update_in_place_keeps_the_plan_and_reaches_it(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, new = tiny_hybrid(seed=0), tiny_hybrid(seed=3)
        adapter = HybridAdapter(model)
        _decode(adapter, model, CONTEXT, 6, 4)
        plan = adapter._row_plan()
        assert plan is not None and plan.valid()
        with torch.no_grad():
            for mine, theirs in zip(model.parameters(), new.parameters()):
                mine.copy_(theirs)
        _decode(adapter, model, CONTEXT, 6, 4)
        assert adapter._row_plan() is plan
    finally:
        torch.set_num_threads(before)


def test_parameters_given_new_storage_rebuild_the_plan():
    model, new = tiny_hybrid(seed=0), tiny_hybrid(seed=3)
    adapter = HybridAdapter(model)
    _decode(adapter, model, CONTEXT, 6, 3)
    plan = adapter._row_plan()
    model.load_state_dict(new.state_dict(), assign=True)  # every parameter re-pointed at new's tensors
    assert not plan.valid()
    _decode(adapter, model, CONTEXT, 6, 3)
    assert adapter._row_plan() is not plan


def test_no_plan_with_the_kernels_switched_off_or_a_layer_they_do_not_take():
    model = tiny_hybrid(seed=0)
    adapter = HybridAdapter(model)
    assert adapter._row_plan() is not None
    with native.switched_off():
        assert adapter._row_plan() is None
        _decode(adapter, model, CONTEXT, 6, 2)
    assert hybrid_row_plan(HybridAdapter(tiny_hybrid(seed=0, q_lora_rank=12))) is None  # MLA queries through a low-rank pair
    assert hybrid_row_plan(HybridAdapter(tiny_hybrid(seed=0).to(torch.bfloat16))) is None


def _llama(model_type: str):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    cls = LlamaConfig if model_type == "llama" else Qwen3Config
    torch.manual_seed(0)
    config = cls(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=128, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("threads", [1, 2])
def test_a_llamas_one_row_runs_through_its_plan_and_follows_weight_updates(threads, monkeypatch):
    from kpop.rollout.builtin.kv_adapter import KVAdapter

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    planned, decode_row = [], KVAdapter._decode_row
    monkeypatch.setattr(KVAdapter, "_decode_row", lambda *a: planned.append(1) or decode_row(*a))
    try:
        model, new = _llama("llama"), _llama("llama")
        with torch.no_grad():
            for p in new.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        adapter = KVAdapter(model)
        _decode(adapter, model, CONTEXT, 6, 5)
        plan = adapter._plans.get(adapter)
        with torch.no_grad():
            for mine, theirs in zip(model.parameters(), new.parameters()):
                mine.copy_(theirs)
        _decode(adapter, model, CONTEXT, 6, 5)
        assert adapter._plans.get(adapter) is plan and len(planned) == 10
    finally:
        torch.set_num_threads(before)


def test_qwen3s_qk_norms_and_bfloat16_keep_the_direct_path(monkeypatch):
    from kpop.rollout.builtin.kv_adapter import KVAdapter
    from kpop.rollout.builtin.kv_row_plan import kv_row_plan

    model = _llama("qwen3")
    assert kv_row_plan(KVAdapter(model)) is None and kv_row_plan(KVAdapter(_llama("llama").to(torch.bfloat16))) is None
    _decode(KVAdapter(model), model, CONTEXT, 6, 3)
