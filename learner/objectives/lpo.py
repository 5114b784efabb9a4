"""LPO: Linguistic-unit Policy Optimization (Ling 2.0), and the unit-ratio PPO-clip it generalises.

A *unit* is a set of generated tokens sharing one importance ratio, the geometric mean of the
token ratios inside it:

    r_u   = exp( 1/|u| · Σ_{t in u} (log π_θ(y_t) - log π_old(y_t)) )
    L     = - 1/N · Σ_t w_t · min( r_{u(t)} · A_{i(t)} , clip(r_{u(t)}, 1-ε, 1+ε) · A_{i(t)} )

where u(t) is the unit of token t, A_i the advantage of its sequence, w_t an optional per-token
weight (off-policy correction; 1 by default) and N the number of generated tokens in the whole
batch. Summing over tokens gives each unit the weight |u|, so with sentence units this is exactly
J_LPO = 1/Σ|y_i| · Σ_i Σ_k |s_ik| · min(r_ik Â_i, clip(r_ik) Â_i)   (ε = 0.03 in Ling 2.0).

Special cases (tested): one unit per token is GRPO; one unit per sequence is GSPO (token-count
normalised). `units` is a long tensor like `logp`: the unit index of each token within its row,
-1 for tokens that are not trained on (prompt, observation, padding). The gradient flows through
every token of a unit: ∂r_u/∂log π_θ(y_t) = r_u / |u|.
"""

from __future__ import annotations

import torch

from kpop.learner.objectives.grpo import PGStats


def unit_mean(values: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Broadcast to each token the mean of `values` over its unit (0 where units == -1)."""
    b, t = values.shape
    valid = units >= 0
    k = int(units.max().item()) + 1 if bool(valid.any()) else 1
    flat = (units.clamp(min=0) + torch.arange(b, device=units.device)[:, None] * k).reshape(-1)
    w = valid.to(values.dtype).reshape(-1)
    sums = torch.zeros(b * k, dtype=values.dtype, device=values.device).index_add(0, flat, values.reshape(-1) * w)
    counts = torch.zeros(b * k, dtype=values.dtype, device=values.device).index_add(0, flat, w)
    return (sums / counts.clamp(min=1))[flat].reshape(b, t) * valid


def unit_clip_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, units: torch.Tensor,
                   clip_eps: float, num_tokens: int,
                   token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, PGStats]:
    """logp, logp_old, units, token_weights: [B, T]; advantages: [B]. Returns (loss, stats)."""
    valid = (units >= 0).to(logp.dtype)
    ratio = torch.exp(unit_mean(logp - logp_old, units))
    adv = advantages[:, None].to(logp.dtype).expand_as(ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
    weights = valid if token_weights is None else valid * token_weights
    loss = -(torch.minimum(unclipped, clipped) * weights).sum() / max(num_tokens, 1)
    with torch.no_grad():
        n = valid.sum().clamp(min=1)
        was_clipped = ((clipped < unclipped) & (valid > 0)).to(logp.dtype).sum() / n
        mean_ratio = (ratio * valid).sum() / n
    return loss, PGStats(float(was_clipped), float(mean_ratio))


def lpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, sentence_units: torch.Tensor,
             clip_eps: float, num_tokens: int,
             token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, PGStats]:
    """LPO with sentence units (see kpop.learner.segmentation); ε = 0.03 in the paper."""
    return unit_clip_loss(logp, logp_old, advantages, sentence_units, clip_eps, num_tokens, token_weights)
