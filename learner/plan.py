"""What one optimiser step trains on: the batch-level decisions, made once, then split over ranks.

`plan_step` turns the Trajectories of a step into a `StepPlan`:
- "sft":     every trajectory, cross-entropy on generated tokens;
- "rl":      every trajectory with its group-normalised advantage (computed over the whole batch,
             so a group split across ranks keeps its baseline);
- "distill": the shortest verified-correct trajectory per prompt (objectives/distill.py);
- "dpo":     rows [chosen_0, rejected_0, chosen_1, ...] from the focus-weighted rubric pairs
             (objectives/preference.py); the focus state is updated on the whole batch first.
The normalisers (`num_tokens`: generated tokens of the kept rows; `num_pairs`) are global, so the
ranks' losses sum to the batch loss. `shard` splits rows contiguously and evenly (pairs stay
together) and fixes one micro-batch count for every rank (ZeRO-3 gathers parameters in each
forward, so all ranks must run the same number of forwards).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from kpop.learner.advantages import group_advantages
from kpop.learner.objectives.distill import select_shortest_correct
from kpop.learner.objectives.preference import FocusState, build_preference_pairs, update_focus
from kpop.spec.learner import LearnerSpec
from kpop.trajectory import Trajectory

Mode = Literal["sft", "rl", "distill", "dpo"]
MODES = ("sft", "rl", "distill", "dpo")


@dataclass(frozen=True)
class StepPlan:
    mode: Mode
    rows: list[Trajectory]
    advantages: list[float]       # one per row ("rl"), else zeros
    num_tokens: int               # generated tokens over all ranks' rows
    num_pairs: int                # preference pairs over all ranks ("dpo")
    sequences: int                # trajectories handed to the step
    focus: FocusState = field(default_factory=FocusState)
    micro_batches: int = 0        # forwards every rank runs (0 = as many as its rows need)
    world_size: int = 1


def plan_step(trajectories: list[Trajectory], mode: str, spec: LearnerSpec, focus: FocusState) -> StepPlan:
    import torch

    if mode not in MODES:
        raise ValueError(f"unknown train_step mode {mode!r}; expected one of {MODES}")
    rows, pairs = list(trajectories), 0
    advantages = [0.0] * len(rows)
    if mode == "rl" and rows:
        rewards = torch.tensor([t.reward for t in rows], dtype=torch.float32)
        adv = group_advantages(rewards, [t.group_id or t.task_id for t in rows], spec.objective.normalize_std)
        advantages = adv.tolist()
    elif mode == "distill":
        rows = select_shortest_correct(rows, spec.distill.correct_threshold)
        advantages = [0.0] * len(rows)
    elif mode == "dpo":
        pref = spec.preference
        focus = update_focus(focus, rows, pref.rubric_weights, pref.focus_decay)
        built = build_preference_pairs(rows, pref.rubric_weights, focus, pref.margin, pref.focus_floor)
        rows = [t for p in built for t in (p.chosen, p.rejected)]
        advantages, pairs = [0.0] * len(rows), len(built)
    tokens = sum(t.num_generated for t in rows)
    return StepPlan(mode, rows, advantages, tokens, pairs, len(trajectories), focus)  # type: ignore[arg-type]


def shard(plan: StepPlan, world_size: int, micro_batch_size: int) -> list[StepPlan]:
    """Contiguous, even split of the rows; pairs ("dpo") are never split."""
    unit = 2 if plan.mode == "dpo" else 1
    groups = len(plan.rows) // unit
    per, extra = divmod(groups, world_size)
    out, start = [], 0
    for r in range(world_size):
        n = (per + (r < extra)) * unit
        out.append(replace(plan, rows=plan.rows[start:start + n], advantages=plan.advantages[start:start + n],
                           world_size=world_size))
        start += n
    mb = micro_batch_rows(plan.mode, micro_batch_size)
    forwards = max(1, max(math.ceil(len(p.rows) / mb) for p in out))
    return [replace(p, micro_batches=forwards) for p in out]


def micro_batch_rows(mode: str, micro_batch_size: int) -> int:
    """Rows per forward; even for "dpo" so a pair shares its micro-batch."""
    return max(2, micro_batch_size + micro_batch_size % 2) if mode == "dpo" else micro_batch_size
