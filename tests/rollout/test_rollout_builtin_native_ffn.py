"""`native.ffn_row` (one row through a weighted sum of SwiGLU experts plus a dense one) against a
float64 reference, and the one-row MoE layer through it against `MoE.forward`: after weight
updates, with the kernels off, and falling back where the shared expert is not a plain SwiGLU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kpop.models.layers.moe import MoE
from kpop.rollout.builtin import native
from kpop.rollout.builtin.moe_decode import moe_forward

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: the native kernels are not built")


def _ffn64(x, gate_up, down):
    gate, up = (gate_up.double() @ x.double()).chunk(2)
    return down.double() @ (F.silu(gate) * up)


@pytest.mark.parametrize("ids,weights,dense", [([1, 5], [0.3, 1.7], True), ([0, 4, 7], [1.0, -0.5, 2.0], False),
                                               ([], [], True), ([6], [0.9], True)])
def test_ffn_row_equals_the_formula(ids, weights, dense, threads):
    gen = torch.Generator().manual_seed(len(ids))
    h, experts, inner, width = 70, 8, 24, 40  # h not a multiple of the SIMD width: the tail loop runs
    x = torch.randn(h, generator=gen)
    gate_up, down = torch.randn(experts, 2 * inner, h, generator=gen) * 0.2, torch.randn(experts, h, inner, generator=gen) * 0.2
    dense_gate_up, dense_down = (torch.randn(2 * width, h, generator=gen) * 0.2, torch.randn(h, width, generator=gen) * 0.2) if dense else (None, None)
    want = sum((w * _ffn64(x, gate_up[e], down[e]) for e, w in zip(ids, weights)), torch.zeros(h, dtype=torch.float64))
    if dense:
        want = want + _ffn64(x, dense_gate_up, dense_down)
    got = native.ffn_row(x, gate_up, down, ids, weights, dense_gate_up, dense_down)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_ffn_row_rejects_what_it_cannot_take():
    x, gate_up, down = torch.zeros(8), torch.zeros(4, 6, 8), torch.zeros(4, 8, 3)
    for ids, weights in [([2, 1], [1.0, 1.0]), ([4], [1.0]), ([1], [1.0, 2.0]), ([1, 1], [1.0, 1.0]), ([], [])]:
        with pytest.raises(ValueError, match="ffn_row"):
            native.ffn_row(x, gate_up, down, ids, weights, None, None)
    with pytest.raises(ValueError, match="ffn_row"):
        native.ffn_row(x, None, None, [], [], torch.zeros(6, 8), torch.zeros(8, 4))  # gate|up 2 x 3, down 4 wide


def _moe(seed: int, **kw) -> MoE:
    torch.manual_seed(seed)
    args = dict(hidden_size=32, num_experts=8, top_k=2, moe_intermediate_size=24, num_shared_experts=1, n_group=4,
                topk_group=2, routed_scaling_factor=2.5) | kw
    return MoE(**args).eval()


@pytest.fixture
def ffn_calls(monkeypatch):
    calls, kernel = [], native.ffn_row
    monkeypatch.setattr(native, "ffn_row", lambda *a: calls.append(1) or kernel(*a))
    return calls


@pytest.mark.parametrize("kw", [{}, {"n_group": None, "topk_group": None, "top_k": 3}, {"num_shared_experts": 0}])
def test_one_row_moe_is_one_native_call_and_equals_the_module(kw, ffn_calls, threads):
    moe, new = _moe(0, **kw), _moe(1, **kw)
    with torch.inference_mode():
        for _ in range(4):
            x = torch.randn(1, 1, 32)
            torch.testing.assert_close(moe_forward(moe, x), moe(x)[0], rtol=0, atol=1e-5)
    with torch.no_grad():  # a weight update copied into the parameters reaches the packed stacks
        for mine, theirs in zip(moe.parameters(), new.parameters()):
            mine.copy_(theirs)
    with torch.inference_mode():
        x = torch.randn(1, 1, 32)
        torch.testing.assert_close(moe_forward(moe, x), new(x)[0], rtol=0, atol=1e-5)
    assert len(ffn_calls) == 5


def test_one_row_moe_without_the_kernels_or_with_another_shared_expert(ffn_calls):
    moe, x = _moe(2), torch.randn(1, 1, 32)
    with torch.inference_mode():
        with native.switched_off():
            torch.testing.assert_close(moe_forward(moe, x), moe(x)[0], rtol=0, atol=1e-5)
        shared = moe.shared_experts
        shared.up_proj = torch.nn.Linear(32, shared.up_proj.out_features, bias=True)  # not bias-free: not plain
        torch.testing.assert_close(moe_forward(moe, x), moe(x)[0], rtol=0, atol=1e-5)
    assert ffn_calls == []
