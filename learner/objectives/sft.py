"""Supervised fine-tuning: token-level cross-entropy on the masked (assistant) tokens.

    L = - Σ_i Σ_t m_it · log π_θ(y_it) / N,   N = Σ m over the whole batch.
"""

from __future__ import annotations

import torch


def sft_loss(logp: torch.Tensor, mask: torch.Tensor, num_tokens: int) -> torch.Tensor:
    return -(logp * mask).sum() / max(num_tokens, 1)
