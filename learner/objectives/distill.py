"""Shortest-correct-response distillation (Ling 2.0): SFT on the shortest verified-correct sample.

For each prompt (Trajectory.group_id), among its samples whose correctness score is >= the
threshold, keep the one with the fewest generated tokens (ties: the first in batch order); prompts
with no correct sample contribute nothing. The correctness score is the reward part "accuracy"
when the environment reports it, else the unshaped task score "task" (every built-in family reports
it), else the scalar reward. The loss is plain token-level SFT on the
kept samples' generated tokens (kpop.learner.objectives.sft):

    L = - Σ_{kept i} Σ_t m_it · log π_θ(y_it) / Σ_{kept i} |y_i|

The report's pruning of "over-reflective" re-checking after the answer is found happens before the
samples reach the learner (kpop.stages.candidates, where the environment marks its answer);
nothing is cut here.
"""

from __future__ import annotations

from kpop.trajectory import Trajectory


def correctness(t: Trajectory) -> float:
    return t.reward_parts.get("accuracy", t.reward_parts.get("task", t.reward))


def select_shortest_correct(trajectories: list[Trajectory], threshold: float) -> list[Trajectory]:
    """One trajectory per prompt with a correct sample, in first-seen prompt order."""
    best: dict[str, Trajectory] = {}
    for t in trajectories:
        if correctness(t) < threshold:
            continue
        key = t.group_id or t.task_id
        if key not in best or t.num_generated < best[key].num_generated:
            best[key] = t
    return list(best.values())
