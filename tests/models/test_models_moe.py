"""MoE routing against a hand-computed case, and the aux-loss-free bias update rebalancing a skewed router."""

from __future__ import annotations

import math

import torch

from kpop.models.layers.moe import MoE, MoEGate


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_group_limited_routing_hand_computed():
    # 8 experts in 4 groups of 2, keep 2 groups, top-3 experts, scaling 2.5; the gate weight is
    # the identity on an 8-dim input so the logits are the input itself.
    gate = MoEGate(8, 8, top_k=3, n_group=4, topk_group=2, routed_scaling_factor=2.5)
    with torch.no_grad():
        gate.weight.copy_(torch.eye(8))
        gate.expert_bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.6]))
    logits = [2.0, -1.0, 0.0, -0.5, 1.5, -3.0, -2.0, -0.5]
    idx, weights, _ = gate(torch.tensor([logits]))
    s = [_sig(x) for x in logits]
    sel = [a + b for a, b in zip(s, [0, 0, 0, 0, 0, 0, 0, 0.6])]
    # group scores (sum of both members): g0 1.150, g1 0.878, g2 0.865, g3 0.497+0.6 = 1.097
    groups = [sel[0] + sel[1], sel[2] + sel[3], sel[4] + sel[5], sel[6] + sel[7]]
    assert sorted(range(4), key=lambda g: -groups[g])[:2] == [0, 3]  # the bias lifts group 3
    # allowed experts 0, 1, 6, 7; by selection score: 7 (0.378+0.6), 0 (0.881), 1 (0.269)
    assert idx[0].tolist() == [7, 0, 1]
    chosen = [s[7], s[0], s[1]]  # raw sigmoid scores, not the biased ones
    expected = [2.5 * c / sum(chosen) for c in chosen]
    assert torch.allclose(weights[0], torch.tensor(expected), atol=1e-6)
    assert weights.dtype == torch.float32


def test_moe_output_is_weighted_experts_plus_shared():
    torch.manual_seed(0)
    moe = MoE(16, num_experts=4, top_k=2, moe_intermediate_size=8, num_shared_experts=1, n_group=2, topk_group=1, routed_scaling_factor=2.5)
    x = torch.randn(5, 16)
    y, _ = moe(x)
    idx, w, _ = moe.gate(x)
    for t in range(5):
        ref = moe.shared_experts(x[t]) + sum(w[t, j] * moe.experts[int(idx[t, j])](x[t]) for j in range(2))
        assert torch.allclose(y[t], ref, atol=1e-5)
        # group limit: both experts come from one group of 2
        assert int(idx[t, 0]) // 2 == int(idx[t, 1]) // 2


def test_router_runs_in_fp32_under_bf16():
    torch.manual_seed(0)
    moe = MoE(16, 4, 2, 8, 1, None, None, 1.0).to(torch.bfloat16)
    y, logits = moe(torch.randn(3, 16, dtype=torch.bfloat16))
    assert logits.dtype == torch.float32 and y.dtype == torch.bfloat16


def test_bias_update_rebalances_skewed_router():
    torch.manual_seed(0)
    gate = MoEGate(16, 8, top_k=2, n_group=None, topk_group=None, routed_scaling_factor=1.0).train()
    with torch.no_grad():
        gate.weight.normal_(0, 0.1)
        gate.weight[0] += 0.5  # expert 0 and 1 are favoured by every token
        gate.weight[1] += 0.4
    data = torch.randn(512, 16).abs()

    def imbalance() -> float:
        load = torch.bincount(gate.select(torch.sigmoid(data @ gate.weight.T) + gate.expert_bias).flatten(), minlength=8).float()
        return (load.max() / load.mean()).item()

    before = imbalance()
    for _ in range(300):
        gate(data)
        gate.update_expert_bias(gamma=1e-3)
    after = imbalance()
    assert before > 3.0 and after < 1.5
    assert gate.expert_bias[0] < 0 and gate.expert_bias[1] < 0  # overloaded experts pushed down
    assert gate.tokens_per_expert.sum() == 0  # counts cleared by each update
