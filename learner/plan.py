"""What one optimiser step trains on: the batch-level decisions, made once, then split over ranks.

`plan_step` turns the Trajectories of a step into a `StepPlan`:
- "sft":     every trajectory, cross-entropy on generated tokens;
- "rl":      every trajectory with a non-zero group-normalised advantage (computed over the whole
             batch, so a group split across ranks keeps its baseline; a row whose advantage is 0,
             e.g. every row of a group whose samples all scored the same, adds exactly nothing to
             the loss or its gradient, so it is not forwarded), split into `learner.minibatches`
             PPO mini-batches (strided: mini-batch k holds kept rows k, k+M, k+2M, ..., so each
             sees every group), each trained `learner.epochs` times with its own optimiser step;
- "distill": the shortest verified-correct trajectory per prompt (objectives/distill.py);
- "dpo":     rows [chosen_0, rejected_0, chosen_1, ...] from the focus-weighted rubric pairs
             (objectives/preference.py); the focus state is updated on the whole batch first.
The normalisers are batch-level and global (`num_tokens`: generated tokens of every row handed to
the step, zero-advantage rows included, so dropping them changes nothing; `num_pairs`): the ranks'
and mini-batches' losses sum to the batch loss at θ_old. `shard` splits each mini-batch's rows
contiguously and evenly over the ranks (pairs stay together) and fixes one micro-batch count per
mini-batch for every rank (ZeRO-3 gathers parameters in each forward, so all ranks must run the
same number of forwards).
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
    micro_batches: int = 0        # forwards per mini-batch every rank runs (0 = as many as its rows need)
    world_size: int = 1
    minibatches: tuple[int, ...] = ()   # this plan's rows per mini-batch, in order (() = one of all rows)
    epochs: int = 1               # passes over the mini-batches ("rl"; else 1)
    trained_tokens: int = 0       # generated tokens of the kept rows over all ranks (metric normaliser)

    @property
    def pieces(self) -> list[list[int]]:
        """Row indices of each mini-batch."""
        sizes = self.minibatches or (len(self.rows),)
        out, start = [], 0
        for n in sizes:
            out.append(list(range(start, start + n)))
            start += n
        return out


def plan_step(trajectories: list[Trajectory], mode: str, spec: LearnerSpec, focus: FocusState) -> StepPlan:
    import torch

    if mode not in MODES:
        raise ValueError(f"unknown train_step mode {mode!r}; expected one of {MODES}")
    rows, pairs, epochs = list(trajectories), 0, 1
    advantages = [0.0] * len(rows)
    tokens = sum(t.num_generated for t in rows)
    sizes: tuple[int, ...] = ()
    if mode == "rl" and rows:
        rewards = torch.tensor([t.reward for t in rows], dtype=torch.float32)
        adv = group_advantages(rewards, [t.group_id or t.task_id for t in rows], spec.objective.normalize_std)
        kept = [(t, a) for t, a in zip(rows, adv.tolist()) if a != 0.0]
        m = spec.minibatches
        ordered = [pair for k in range(m) for pair in kept[k::m]]
        rows, advantages = [t for t, _ in ordered], [a for _, a in ordered]
        sizes = tuple(n for n in (len(kept[k::m]) for k in range(m)) if n)
        epochs = spec.epochs
    elif mode == "distill":
        rows = select_shortest_correct(rows, spec.distill.correct_threshold)
        advantages = [0.0] * len(rows)
    elif mode == "dpo":
        pref = spec.preference
        focus = update_focus(focus, rows, pref.rubric_weights, pref.focus_decay)
        built = build_preference_pairs(rows, pref.rubric_weights, focus, pref.margin, pref.focus_floor, pref.pairing)
        rows = [t for p in built for t in (p.chosen, p.rejected)]
        advantages, pairs = [0.0] * len(rows), len(built)
    if mode != "rl":
        tokens = sum(t.num_generated for t in rows)
    return StepPlan(mode, rows, advantages, tokens, pairs, len(trajectories), focus,  # type: ignore[arg-type]
                    minibatches=sizes or (len(rows),), epochs=epochs,
                    trained_tokens=sum(t.num_generated for t in rows))


def shard(plan: StepPlan, world_size: int, micro_batch_size: int) -> list[StepPlan]:
    """Each mini-batch split contiguously and evenly over the ranks; pairs ("dpo") are never split."""
    unit = 2 if plan.mode == "dpo" else 1
    rows: list[list] = [[] for _ in range(world_size)]
    advs: list[list[float]] = [[] for _ in range(world_size)]
    sizes: list[list[int]] = [[] for _ in range(world_size)]
    for piece in plan.pieces:
        per, extra = divmod(len(piece) // unit, world_size)
        start = piece[0] if piece else 0
        for r in range(world_size):
            n = (per + (r < extra)) * unit
            rows[r] += plan.rows[start:start + n]
            advs[r] += plan.advantages[start:start + n]
            sizes[r].append(n)
            start += n
    mb = micro_batch_rows(plan.mode, micro_batch_size)
    forwards = max(1, max(math.ceil(n / mb) for s in sizes for n in s)) if plan.rows else 1
    return [replace(plan, rows=rows[r], advantages=advs[r], minibatches=tuple(sizes[r]), world_size=world_size,
                    micro_batches=forwards) for r in range(world_size)]


def micro_batch_rows(mode: str, micro_batch_size: int) -> int:
    """Rows per forward; even for "dpo" so a pair shares its micro-batch."""
    return max(2, micro_batch_size + micro_batch_size % 2) if mode == "dpo" else micro_batch_size
