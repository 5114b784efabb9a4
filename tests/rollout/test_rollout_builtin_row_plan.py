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
from kpop.rollout.builtin.tiny_models import tiny_hybrid

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: the native kernels are not built")


CONTEXT = torch.randint(0, 320, (20,), generator=torch.Generator().manual_seed(5)).tolist()


def test_a_weight_update_in_place_keeps_the_plan_and_reaches_it(threads, decode_one_row):
    model, new = tiny_hybrid(seed=0), tiny_hybrid(seed=3)
    adapter = HybridAdapter(model)
    decode_one_row(adapter, model, CONTEXT, 6, 4)
    plan = adapter._row_plan()
    assert plan is not None and plan.valid() and None not in plan.feed_forward  # the dense SwiGLU layer too
    with torch.no_grad():
        for mine, theirs in zip(model.parameters(), new.parameters()):
            mine.copy_(theirs)
    decode_one_row(adapter, model, CONTEXT, 6, 4)
    assert adapter._row_plan() is plan


def test_parameters_given_new_storage_rebuild_the_plan(decode_one_row):
    model, new = tiny_hybrid(seed=0), tiny_hybrid(seed=3)
    adapter = HybridAdapter(model)
    decode_one_row(adapter, model, CONTEXT, 6, 3)
    plan = adapter._row_plan()
    model.load_state_dict(new.state_dict(), assign=True)  # every parameter re-pointed at new's tensors
    assert not plan.valid()
    decode_one_row(adapter, model, CONTEXT, 6, 3)
    assert adapter._row_plan() is not plan


def test_the_plan_is_checked_at_prefill_not_at_every_step(monkeypatch, decode_one_row):
    """valid() reads every watched parameter (the medium hybrid's 268 entries: 350 us cold), so it
    runs once a generation, at its prefill."""
    from kpop.rollout.builtin.row_plan import RowPlan

    checks, valid = [], RowPlan.valid
    monkeypatch.setattr(RowPlan, "valid", lambda self: checks.append(1) or valid(self))
    model = tiny_hybrid(seed=0)
    adapter = HybridAdapter(model)
    decode_one_row(adapter, model, CONTEXT, 6, 5)  # builds the plan: nothing to check yet
    decode_one_row(adapter, model, CONTEXT, 6, 5)
    assert checks == [1]


def test_no_plan_with_the_kernels_switched_off_or_a_layer_they_do_not_take(decode_one_row):
    model = tiny_hybrid(seed=0)
    adapter = HybridAdapter(model)
    assert adapter._row_plan() is not None
    with native.switched_off():
        assert adapter._row_plan() is None
        decode_one_row(adapter, model, CONTEXT, 6, 2)
    assert hybrid_row_plan(HybridAdapter(tiny_hybrid(seed=0, q_lora_rank=12))) is None  # MLA queries through a low-rank pair
    assert hybrid_row_plan(HybridAdapter(tiny_hybrid(seed=0).to(torch.float16))) is None  # float32 and bfloat16 only


def test_a_llamas_one_row_runs_through_its_plan_and_follows_weight_updates(threads, monkeypatch, tiny_model,
                                                                          decode_one_row):
    from kpop.rollout.builtin.kv_adapter import KVAdapter

    planned, decode_row = [], KVAdapter._decode_row
    monkeypatch.setattr(KVAdapter, "_decode_row", lambda *a: planned.append(1) or decode_row(*a))
    model, new = tiny_model("llama"), tiny_model("llama")
    with torch.no_grad():
        for p in new.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    adapter = KVAdapter(model)
    decode_one_row(adapter, model, CONTEXT, 6, 5)
    plan = adapter._plans.get(adapter)
    with torch.no_grad():
        for mine, theirs in zip(model.parameters(), new.parameters()):
            mine.copy_(theirs)
    decode_one_row(adapter, model, CONTEXT, 6, 5)
    assert adapter._plans.get(adapter) is plan and len(planned) == 10


def test_qwen3s_qk_norms_and_float16_keep_the_direct_path(tiny_model, decode_one_row):
    from kpop.rollout.builtin.kv_adapter import KVAdapter
    from kpop.rollout.builtin.kv_row_plan import kv_row_plan

    model = tiny_model("qwen3")
    assert kv_row_plan(KVAdapter(model)) is None and kv_row_plan(KVAdapter(tiny_model("llama").to(torch.float16))) is None
    decode_one_row(KVAdapter(model), model, CONTEXT, 6, 3)


def test_rope_tables_are_kept_per_position_for_the_default_rope_only(tiny_model, decode_one_row):
    """A second generation over the same positions computes no table; any other rope type (here
    linear scaling; dynamic ones change their frequencies with the length) is recomputed every
    step, and both decode as the full forward does."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from kpop.rollout.builtin.kv_adapter import KVAdapter

    model = tiny_model("llama")
    adapter = KVAdapter(model)
    decode_one_row(adapter, model, CONTEXT, 6, 4)
    tables = dict(adapter._plans.plan.tables)
    assert sorted(position for _, position in tables) == [6, 7, 8, 9]
    decode_one_row(adapter, model, CONTEXT, 6, 4)
    assert all(adapter._plans.plan.tables[key][0] is tables[key][0] for key in tables)  # the same tensors
    config = LlamaConfig(**{**model.config.to_dict(), "rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    scaled = AutoModelForCausalLM.from_config(config).eval()
    assert scaled.model.rotary_emb.rope_type == "linear"
    scaled.load_state_dict(model.state_dict())
    adapter = KVAdapter(scaled)
    decode_one_row(adapter, scaled, CONTEXT, 6, 4)
    assert adapter._plans.plan is not None and not adapter._plans.plan.tables


def test_the_serial_build_decodes_the_same(monkeypatch, tiny_model, decode_one_row):
    """Where torch does not run on libgomp the library is built without OpenMP: every kernel
    runs on one thread, and one-row decoding still equals the full forward (hybrid and Llama)."""
    from kpop.rollout.builtin.kv_adapter import KVAdapter

    monkeypatch.setattr(native, "torch_on_libgomp", lambda: False)
    native._library.cache_clear()
    try:
        assert native.library()._name == str(native.build(openmp=False))
        for adapter_type, model in ((HybridAdapter, tiny_hybrid(seed=0)), (KVAdapter, tiny_model("llama"))):
            adapter = adapter_type(model)
            decode_one_row(adapter, model, CONTEXT, 6, 4)
            assert adapter._plans.get(adapter) is not None
    finally:
        native._library.cache_clear()
