"""`moe_forward` (kpop.rollout.builtin.moe_decode) against the model's own `MoE.forward`: one row,
several rows with the router's load uneven (the per-expert path), and after a weight update
copied into the experts' parameters, also with experts large enough for oneDNN's prepacked copies."""

from __future__ import annotations

import pytest
import torch

from kpop.models.layers.moe import MoE
from kpop.rollout.builtin import onednn
from kpop.rollout.builtin.moe_decode import moe_forward


def _moe(seed: int, hidden: int = 32, inner: int = 24) -> MoE:
    torch.manual_seed(seed)
    return MoE(hidden_size=hidden, num_experts=8, top_k=2, moe_intermediate_size=inner, num_shared_experts=1,
               n_group=4, topk_group=2, routed_scaling_factor=2.5).eval()


@pytest.mark.parametrize("rows", [1, 3, 64])
def test_moe_forward_equals_the_modules_forward(rows):
    moe = _moe(0)
    with torch.no_grad():
        moe.gate.expert_bias[0] = 5.0  # expert 0 in every row's top-k: uneven load, padding in use
    x = torch.randn(rows, 1, 32)
    with torch.inference_mode():
        got = moe_forward(moe, x)
        want, _ = moe(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_weight_updates_reach_the_stacked_experts():
    moe, new = _moe(0), _moe(1)
    x = torch.randn(16, 1, 32)
    with torch.inference_mode():
        moe_forward(moe, x)  # builds the stacks
    with torch.no_grad():
        for mine, theirs in zip(moe.parameters(), new.parameters()):
            mine.copy_(theirs)
    with torch.inference_mode():
        got = moe_forward(moe, x)
        want, _ = new(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("forced", [(2, 6), (0, 3, 6), (0, 1, 5)])
def test_one_row_with_two_or_three_chosen_experts(forced):
    """One row, top-2 and top-3 routers (no groups), the chosen experts forced by their biases."""
    torch.manual_seed(0)
    moe = MoE(hidden_size=32, num_experts=8, top_k=len(forced), moe_intermediate_size=24, num_shared_experts=1,
              n_group=None, topk_group=None, routed_scaling_factor=2.5).eval()
    with torch.no_grad():
        for e in forced:
            moe.gate.expert_bias[e] = 5.0
    x = torch.randn(1, 1, 32)
    with torch.inference_mode():
        assert sorted(moe.gate(x[0])[0][0].tolist()) == list(forced)
        got = moe_forward(moe, x)
        want, _ = moe(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN")
def test_experts_on_onednn_follow_weight_updates():
    moe, new = _moe(0, hidden=512, inner=512), _moe(1, hidden=512, inner=512)  # expert slices >= 2**18 elements
    x = torch.randn(16, 1, 512)
    with torch.inference_mode():
        torch.testing.assert_close(moe_forward(moe, x), moe(x)[0], rtol=0, atol=1e-4)
    used = [e.__dict__.get("_kpop_onednn", {}) for e in moe.experts]
    assert any("gate_up" in u for u in used) and any("down" in u for u in used)
    with torch.no_grad():
        for mine, theirs in zip(moe.parameters(), new.parameters()):
            mine.copy_(theirs)
    with torch.inference_mode():
        torch.testing.assert_close(moe_forward(moe, x), new(x)[0], rtol=0, atol=1e-4)
