"""Scheduler measurements of a trained batch that only the KPop loop has (definitions of every
key: kpop.metrics.KEYS; the record itself: kpop.loop.record.rl_record plus the scheduler's keys)."""

from __future__ import annotations

from kpop.scheduler.buffer import Group


def resumed_count(groups: list[Group]) -> int:
    """Trained trajectories whose generated tokens span more than one policy version."""
    return sum(len({v for v, m in zip(t.versions, t.loss_mask) if m}) > 1 for g in groups for t in g.trajs.values())
