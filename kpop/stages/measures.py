"""The figures a round is judged by, over a list of Trajectories.

- `correct_tokens`: mean generated tokens per correct response (correctness as distillation
  judges it, kpop.learner.objectives.distill.correctness, at `threshold`); None without one.
- `mean_rubric`: mean signed rubric score (kpop.learner.objectives.preference.rubric_score, plain
  weights, no focus) over the trajectories that report at least one rubric part; None without one.
"""

from __future__ import annotations

from collections.abc import Mapping

from kpop.learner.objectives.distill import correctness
from kpop.learner.objectives.preference import rubric_score
from kpop.trajectory import Trajectory


def correct_tokens(trajs: list[Trajectory], threshold: float) -> float | None:
    lengths = [t.num_generated for t in trajs if correctness(t) >= threshold]
    return sum(lengths) / len(lengths) if lengths else None


def mean_rubric(trajs: list[Trajectory], weights: Mapping[str, float]) -> float | None:
    scored = [rubric_score(t.reward_parts, weights) for t in trajs if any(k in t.reward_parts for k in weights)]
    return sum(scored) / len(scored) if scored else None
