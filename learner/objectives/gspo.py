"""GSPO: PPO-clip with one geometric-mean ratio per sequence, token-count normalised.

    s_i = exp( 1/|y_i| · Σ_t (log π_θ(y_it) - log π_old(y_it)) )
    L   = - 1/N · Σ_i |y_i| · min( s_i · A_i , clip(s_i, 1-ε, 1+ε) · A_i )

The GSPO paper averages over sequences (1/G Σ_i); here every sequence is weighted by its
generated-token count and the whole batch is divided by N = Σ|y_i|, so GSPO, LPO and GRPO share
one normaliser (which is what lets micro-batches sum to the batch loss). All generated tokens of
a trajectory, across turns, form one unit.
"""

from __future__ import annotations

import torch

from kpop.learner.objectives.grpo import PGStats
from kpop.learner.objectives.lpo import unit_clip_loss


def sequence_units(mask: torch.Tensor) -> torch.Tensor:
    """Unit 0 for every trained token of a row, -1 elsewhere."""
    return torch.where(mask > 0, 0, -1).long()


def token_units(mask: torch.Tensor) -> torch.Tensor:
    """One unit per trained token (the GRPO limit)."""
    idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask > 0, idx, -1).long()


def gspo_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip_eps: float, num_tokens: int,
              token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, PGStats]:
    return unit_clip_loss(logp, logp_old, advantages, sequence_units(mask), clip_eps, num_tokens, token_weights)
