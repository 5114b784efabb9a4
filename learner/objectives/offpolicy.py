"""Off-policy corrections for the train/inference mismatch, and the mismatch metrics.

Per generated token y_t: log p = trainer recomputation at θ_old (π_prox), log q = the engine's
log-prob when it sampled y_t (π_behav, possibly from an older policy version). Each correction
returns a per-token weight w_t that multiplies the PPO term of the objective (the normaliser stays
the original token count N, so masked tokens count in N but contribute 0):

- KPop (binary KL; sampled token vs the rest of the vocabulary as a Bernoulli event):
      D(p||q) = p·log(p/q) + (1-p)·log((1-p)/(1-q))
      w_t = 1[max(D(p||q), D(q||p)) <= φ] · 1[p/q <= C] · exp(log p - log q)   (decoupled PPO weight)
  The binary-KL region admits large ratios for rare tokens (p = 0.2, q = 0.01: D = 0.43, ratio
  20); with stale behaviour tokens these few dominate a step's direction, so tokens above the cap
  C are filtered too (AReaL's behaviour-weight cap; C = None keeps every ratio).
- IcePop (Ring-1T): k = p/q;  w_t = k if α <= k <= β else 0
- TIS (truncated importance sampling): w_t = min(p/q, C)
- none: w_t = 1

Weights are constants (computed without gradient). Metrics, every step: mean |log p - log q| and
the masked fraction (share of generated tokens with w_t = 0), both over generated tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_EPS = 1e-12


@dataclass(frozen=True)
class Correction:
    weights: torch.Tensor   # [B, T] per-token weight (0 on masked tokens)
    masked: torch.Tensor    # [B, T] bool, generated tokens the correction zeroed


def binary_kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """D(p||q) of the Bernoulli events 'the sampled token' with probabilities p = e^logp, q = e^logq."""
    p, q = logp.exp().clamp(_EPS, 1 - _EPS), logq.exp().clamp(_EPS, 1 - _EPS)
    return p * (p.log() - q.log()) + (1 - p) * ((1 - p).log() - (1 - q).log())


def kpop_weights(logp: torch.Tensor, logq: torch.Tensor, mask: torch.Tensor, phi: float,
                 cap: float | None = None) -> Correction:
    with torch.no_grad():
        d = torch.maximum(binary_kl(logp, logq), binary_kl(logq, logp))
        ratio = torch.exp(logp - logq)
        keep = (d <= phi) & (mask > 0)
        if cap is not None:
            keep &= ratio <= cap
        w = ratio * keep
    return Correction(w, (mask > 0) & ~keep)


def icepop_weights(logp: torch.Tensor, logq: torch.Tensor, mask: torch.Tensor,
                   alpha: float, beta: float) -> Correction:
    with torch.no_grad():
        k = torch.exp(logp - logq)
        keep = (k >= alpha) & (k <= beta) & (mask > 0)
    return Correction(k * keep, (mask > 0) & ~keep)


def tis_weights(logp: torch.Tensor, logq: torch.Tensor, mask: torch.Tensor, cap: float) -> Correction:
    with torch.no_grad():
        w = torch.exp(logp - logq).clamp(max=cap) * (mask > 0)
    return Correction(w, torch.zeros_like(mask, dtype=torch.bool))


def correction_weights(spec, logp: torch.Tensor, logq: torch.Tensor, mask: torch.Tensor) -> Correction:
    """Dispatch on an `off_policy` spec (kpop.spec.learner.OffPolicySpec)."""
    if spec.type == "kpop":
        return kpop_weights(logp, logq, mask, spec.phi, spec.cap)
    if spec.type == "icepop":
        return icepop_weights(logp, logq, mask, spec.alpha, spec.beta)
    if spec.type == "tis":
        return tis_weights(logp, logq, mask, spec.cap)
    if spec.type == "none":
        return Correction((mask > 0).to(logp.dtype), torch.zeros_like(mask, dtype=torch.bool))
    raise ValueError(f"unknown off-policy correction {spec.type!r}")


@dataclass(frozen=True)
class MismatchSums:
    """Sums over generated tokens; divide by the token count for the step's means."""

    abs_logratio: float
    masked: float


def mismatch_sums(logp: torch.Tensor, logq: torch.Tensor, mask: torch.Tensor, masked: torch.Tensor) -> MismatchSums:
    with torch.no_grad():
        return MismatchSums(float(((logp - logq).abs() * mask).sum()), float((masked & (mask > 0)).sum()))
