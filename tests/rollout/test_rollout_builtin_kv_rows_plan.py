"""`KVAdapter`'s several-row plan (kpop.rollout.builtin.kv_rows_plan): the direct path's values bit
for bit in float32 and bfloat16 on one and two threads, the model's full forward after weight
updates copied in place (the oneDNN copies refreshed), rebuilt when parameters get new storage,
absent where the kernels do not take a model."""

from __future__ import annotations

import pytest
import torch

from kpop.rollout.builtin import native
from kpop.rollout.builtin.kv_adapter import KVAdapter
from kpop.rollout.builtin.kv_rows_plan import kv_rows_plan
from kpop.rollout.builtin.slots import CacheSpec, SlotCache

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: the native kernels are not built")

PROMPTS = [5, 11, 2, 8]
STEPS = 6
CONTEXTS = [torch.randint(0, 320, (p + STEPS,), generator=torch.Generator().manual_seed(p)).tolist() for p in PROMPTS]


@torch.inference_mode()
def _decode(adapter: KVAdapter) -> list[torch.Tensor]:
    """Each row prefilled alone, then STEPS steps of all rows together: logits [B, V] per step."""
    cache, lengths = None, []
    for row, (ctx, p) in enumerate(zip(CONTEXTS, PROMPTS)):
        _, state = adapter.prefill(torch.tensor([ctx[:p]]))
        if cache is None:
            specs = [CacheSpec(tuple(t.shape[1:]), d, t.dtype) for t, d in zip(state, adapter.col_dims)]
            cache = SlotCache(specs, max_rows=len(PROMPTS), max_cols=64)
        cache.ensure(row + 1, max(PROMPTS) + STEPS)
        cache.write_rows(row, state)
        lengths.append(p)
    steps = []
    for _ in range(STEPS):
        tokens = torch.tensor([ctx[n] for ctx, n in zip(CONTEXTS, lengths)])
        steps.append(adapter.decode(cache.tensors, torch.tensor(lengths), max(lengths), tokens).clone())
        lengths = [n + 1 for n in lengths]
    return steps


def _worst_vs_forward(model, got: list[torch.Tensor]) -> float:
    worst = 0.0
    with torch.inference_mode():
        for step, logits in enumerate(got):
            for row, (ctx, p) in enumerate(zip(CONTEXTS, PROMPTS)):
                want = model(torch.tensor([ctx[: p + step + 1]])).logits[0, -1]
                worst = max(worst, (want.float() - logits[row].float()).abs().max().item())
    return worst


@pytest.fixture
def planned(monkeypatch) -> list[int]:
    """One entry per several-row step that went through the plan."""
    calls, decode_rows = [], KVAdapter._decode_rows
    monkeypatch.setattr(KVAdapter, "_decode_rows", lambda *a: calls.append(1) or decode_rows(*a))
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_several_rows_decode_through_the_plan_as_the_direct_path_does_bit_for_bit(dtype, threads, planned,
                                                                                  monkeypatch, tiny_model):
    model = tiny_model("llama").to(dtype)
    got = _decode(KVAdapter(model))
    assert len(planned) == STEPS
    monkeypatch.setattr(KVAdapter, "_decode_rows", lambda self, plan, *args: self._direct(*args))
    want = _decode(KVAdapter(model))
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    if dtype == torch.float32:
        assert _worst_vs_forward(model, got) < 1e-4


def test_the_plan_follows_weight_updates_copied_in_place_through_onednn(threads, planned, monkeypatch, tiny_model):
    """Every product through oneDNN's prepacked copies (the medium models' path): an update copied
    into the parameters keeps the plan and reaches the products."""
    from kpop.rollout.builtin import matmul, onednn

    if not onednn.available():
        pytest.skip("this torch build has no oneDNN linear ops")
    products, packed_linear = [], onednn.linear
    monkeypatch.setattr(matmul, "MIN_NUMEL", 0)
    monkeypatch.setattr(onednn, "linear", lambda *a, **k: products.append(1) or packed_linear(*a, **k))
    model, new = tiny_model("llama"), tiny_model("llama")
    with torch.no_grad():
        for p in new.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    adapter = KVAdapter(model)
    assert _worst_vs_forward(model, _decode(adapter)) < 1e-4
    plan = adapter._rows_plans.get(adapter)
    with torch.no_grad():
        for mine, theirs in zip(model.parameters(), new.parameters()):
            mine.copy_(theirs)
    assert _worst_vs_forward(new, _decode(adapter)) < 1e-4
    assert adapter._rows_plans.get(adapter) is plan and len(planned) == 2 * STEPS
    assert len(products) >= 2 * STEPS * 4 * model.config.num_hidden_layers  # q|k|v, o, gate|up, down


def test_parameters_given_new_storage_rebuild_the_plan_at_the_next_prefill(planned, tiny_model):
    model = tiny_model("llama")
    adapter = KVAdapter(model)
    _decode(adapter)
    plan = adapter._rows_plans.get(adapter)
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone() * 1.01
    assert _worst_vs_forward(model, _decode(adapter)) < 1e-4
    assert adapter._rows_plans.get(adapter) is not plan and len(planned) == 2 * STEPS


def test_no_plan_where_the_kernels_do_not_take_the_model(planned, tiny_model):
    model = tiny_model("qwen3")  # q/k norms
    assert kv_rows_plan(KVAdapter(model)) is None
    assert kv_rows_plan(KVAdapter(tiny_model("llama").to(torch.float16))) is None
    assert _worst_vs_forward(model, _decode(KVAdapter(model))) < 1e-4
    llama = KVAdapter(tiny_model("llama"))
    with native.switched_off():
        assert llama._rows_plans.get(llama) is None
        _decode(llama)
    assert not planned
