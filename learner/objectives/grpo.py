"""GRPO: PPO-clip with a per-token ratio and group-normalised sequence advantages.

    r_t  = exp(log π_θ(y_t) - log π_old(y_t))
    L    = - Σ_i Σ_t m_it · min(r_t · A_i, clip(r_t, 1-ε, 1+ε) · A_i) / N

m is the loss mask (policy-generated tokens only; multiplied by an optional per-token off-policy
weight w_t, see offpolicy.py), A_i the advantage of sequence i broadcast to its tokens and N the number of generated tokens in the whole batch (token-level normalisation,
passed in so micro-batches sum to the batch loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PGStats:
    clipped_fraction: float
    mean_ratio: float


def grpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_eps: float, num_tokens: int,
              token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, PGStats]:
    """logp, logp_old, mask: [B, T]; advantages: [B]. Returns the summed loss / num_tokens."""
    ratio = torch.exp(logp - logp_old)
    adv = advantages[:, None].expand_as(ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
    per_token = -torch.minimum(unclipped, clipped)
    weights = mask if token_weights is None else mask * token_weights
    loss = (per_token * weights).sum() / max(num_tokens, 1)
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        was_clipped = ((clipped < unclipped) & (mask > 0)).float().sum() / n   # the clip took effect
        mean_ratio = (ratio * mask).sum() / n
    return loss, PGStats(float(was_clipped), float(mean_ratio))
