"""Bidirectional preference alignment: a signed rubric score, focus re-weighting, and DPO.

Rubric convention: every reward part named in the rubric is a degree in [0, 1] of one property
(e.g. "informative", "constraints" satisfied, "errors", "verbosity"); its signed weight w_k says
whether the property is rewarded (w_k > 0) or penalised (w_k < 0). The score is bidirectional:

    S(y) = Σ_k f_k · w_k · part_k(y)                     (missing parts count as 0)

Focus (counters saturation / length hacking): a dimension is *saturated* when on-policy samples
already sit at its best value (part >= 1 - tol if w_k > 0, part <= tol if w_k < 0). With sat_k the
EMA (decay δ) of the saturated share of samples,

    g_k = floor + (1 - floor) · (1 - sat_k),     f_k = g_k · Σ_j |w_j| / Σ_j |w_j| g_j

so the total rubric weight is preserved and moves from saturated to unsaturated dimensions.

Pairs: per prompt (group_id), the highest-scoring sample is chosen (the first of equals) and, with
pairing "best_worst", the lowest rejected, when their gap exceeds `margin`; with "best_each",
every sample scoring more than `margin` below it is rejected in a pair of its own. best_worst
moves probability between the tails; best_each also pushes down the policy's common replies (the
one greedy decoding gives, where it is not the best), at the cost of more pairs per step. DPO loss with inverse temperature β and label smoothing ε (cDPO):

    z = β · [(log π_θ(y_c) - log π_ref(y_c)) - (log π_θ(y_r) - log π_ref(y_r))]
    L = - 1/P · Σ_pairs [ (1-ε) · log σ(z) + ε · log σ(-z) ]

with log π(y) the sum of the response's token log-probs and P the number of pairs in the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kpop.trajectory import Trajectory

SATURATION_TOL = 1e-3


@dataclass(frozen=True)
class FocusState:
    saturation: dict[str, float] = field(default_factory=dict)
    updates: int = 0


def is_saturated(value: float, weight: float, tol: float = SATURATION_TOL) -> bool:
    return value >= 1 - tol if weight > 0 else value <= tol


def update_focus(state: FocusState, trajectories: list[Trajectory], weights: Mapping[str, float],
                 decay: float) -> FocusState:
    """EMA of each dimension's saturated share; the first update takes the observed share."""
    if not trajectories:
        return state
    sat = dict(state.saturation)
    for k, w in weights.items():
        share = sum(is_saturated(t.reward_parts.get(k, 0.0), w) for t in trajectories) / len(trajectories)
        sat[k] = share if k not in sat else decay * sat[k] + (1 - decay) * share
    return FocusState(sat, state.updates + 1)


def focus_weights(weights: Mapping[str, float], state: FocusState, floor: float) -> dict[str, float]:
    g = {k: floor + (1 - floor) * (1 - state.saturation.get(k, 0.0)) for k in weights}
    total = sum(abs(w) for w in weights.values())
    mass = sum(abs(w) * g[k] for k, w in weights.items())
    scale = total / mass if mass > 0 else 1.0
    return {k: w * g[k] * scale for k, w in weights.items()}


def rubric_score(parts: Mapping[str, float], weights: Mapping[str, float]) -> float:
    return sum(w * parts.get(k, 0.0) for k, w in weights.items())


@dataclass(frozen=True)
class PreferencePair:
    chosen: Trajectory
    rejected: Trajectory
    gap: float


def build_preference_pairs(trajectories: list[Trajectory], rubric_weights: Mapping[str, float],
                           focus_state: FocusState, margin: float = 0.0, floor: float = 0.1,
                           pairing: str = "best_worst") -> list[PreferencePair]:
    """The best sample of each prompt against its worst ("best_worst") or against each sample
    below it ("best_each"), under the focus-weighted signed rubric score."""
    weights = focus_weights(rubric_weights, focus_state, floor)
    groups: dict[str, list[tuple[float, Trajectory]]] = {}
    for t in trajectories:
        groups.setdefault(t.group_id or t.task_id, []).append((rubric_score(t.reward_parts, weights), t))
    pairs = []
    for scored in groups.values():
        best = max(scored, key=lambda s: s[0])
        below = [s for s in scored if best[0] - s[0] > margin]
        if pairing == "best_worst":
            below = [min(below, key=lambda s: s[0])] if below else []
        pairs += [PreferencePair(best[1], t, best[0] - score) for score, t in below]
    return pairs


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float, num_pairs: int, label_smoothing: float = 0.0) -> tuple[torch.Tensor, float]:
    """Sequence log-probs [P] each; returns (summed loss / num_pairs, share of pairs with z > 0)."""
    z = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    per_pair = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return per_pair.sum() / max(num_pairs, 1), float((z > 0).float().mean()) if z.numel() else 0.0
