"""Mixture-of-Experts FFN with a sigmoid router and auxiliary-loss-free load balancing.

Routing for a token x (all in float32, whatever the model dtype):
    s        = sigmoid(W_gate x)                     [E]   raw affinities
    s_sel    = s + b                                 b = `gate.expert_bias` (selection only)
    groups   : split E into n_group groups; a group's score is the sum of its top-2 s_sel;
               keep the topk_group best groups, mask the other experts to -inf
    idx      = top-k of the masked s_sel
    weight_i = s[idx_i] / (sum_j s[idx_j] + 1e-20) * routed_scaling_factor   (k = 1: s[idx] * factor)
    y        = sum_i weight_i * expert_{idx_i}(x) + shared_experts(x)

Bias update (DeepSeek-V3 aux-loss-free balancing): the layer counts tokens per expert while
training (only real tokens: positions where the attention mask is 0, e.g. padding, are routed but
not counted); `update_expert_bias(gamma)` moves each bias by gamma * sign(mean_load - load_e),
i.e. overloaded experts down and underloaded ones up, then clears the counts. The learner calls it
after each optimiser step (kpop.learner.balance; `learner.expert_bias_gamma`). The bias never
receives gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kpop.models.layers.mlp import SwiGLU


class MoEGate(nn.Module):
    """Router; parameter `weight` [E, hidden] and persistent buffer `expert_bias` [E] (float32)."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, n_group: int | None, topk_group: int | None, routed_scaling_factor: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        nn.init.normal_(self.weight, std=0.02)
        self.register_buffer("expert_bias", torch.zeros(num_experts, dtype=torch.float32))
        self.register_buffer("tokens_per_expert", torch.zeros(num_experts, dtype=torch.float32), persistent=False)
        self.top_k, self.n_group, self.topk_group = top_k, n_group or 1, topk_group or 1
        self.routed_scaling_factor = routed_scaling_factor

    def select(self, selection_scores: torch.Tensor) -> torch.Tensor:
        n, e = selection_scores.shape
        if self.n_group > 1:
            grouped = selection_scores.view(n, self.n_group, e // self.n_group)
            group_scores = grouped.topk(min(2, e // self.n_group), dim=-1).values.sum(-1)
            keep = group_scores.topk(self.topk_group, dim=-1).indices
            group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
            expert_mask = group_mask[:, :, None].expand_as(grouped).reshape(n, e)
            selection_scores = selection_scores.masked_fill(~expert_mask, float("-inf"))
        return selection_scores.topk(self.top_k, dim=-1).indices

    def forward(self, x: torch.Tensor, counted: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, hidden] -> (indices [N, k], weights [N, k] float32, logits [N, E] float32).
        `counted` [N] bool: the tokens whose routing counts towards the load (default all)."""
        logits = F.linear(x.float(), self.weight.float())
        scores = torch.sigmoid(logits)
        idx = self.select(scores + self.expert_bias)
        weights = scores.gather(1, idx)
        if self.top_k > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        weights = weights * self.routed_scaling_factor
        if self.training:
            chosen = idx if counted is None else idx[counted]
            self.tokens_per_expert += torch.bincount(chosen.flatten(), minlength=scores.shape[1]).float()
        return idx, weights, logits

    @torch.no_grad()
    def update_expert_bias(self, gamma: float) -> torch.Tensor:
        """Apply the sign update from the counted load; returns the load that was used."""
        load = self.tokens_per_expert.clone()
        if load.sum() > 0:
            self.expert_bias += gamma * torch.sign(load.mean() - load)
        self.tokens_per_expert.zero_()
        return load


class MoE(nn.Module):
    def __init__(self, hidden_size: int, num_experts: int, top_k: int, moe_intermediate_size: int, num_shared_experts: int, n_group: int | None, topk_group: int | None, routed_scaling_factor: float) -> None:
        super().__init__()
        self.gate = MoEGate(hidden_size, num_experts, top_k, n_group, topk_group, routed_scaling_factor)
        self.experts = nn.ModuleList(SwiGLU(hidden_size, moe_intermediate_size) for _ in range(num_experts))
        self.shared_experts = SwiGLU(hidden_size, moe_intermediate_size * num_shared_experts) if num_shared_experts else None

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., T, hidden]; `attention_mask` [B, >= T] (0/1, its last T columns are x's tokens)
        only decides which tokens the load counts."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        counted = None
        if attention_mask is not None and x.dim() == 3:
            counted = attention_mask[:, -shape[1]:].reshape(-1).bool()
        idx, weights, logits = self.gate(flat, counted)
        out = torch.zeros_like(flat, dtype=torch.float32)
        for e in torch.unique(idx).tolist():
            token, slot = torch.nonzero(idx == e, as_tuple=True)
            contrib = self.experts[e](flat[token]).float() * weights[token, slot, None]
            out.index_add_(0, token, contrib)
        out = out.to(x.dtype)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.reshape(shape), logits.reshape(*shape[:-1], -1)
