"""The cross-version rollout buffer: groups of G samples, collected across policy versions.

A group (one task sampled G times) is the unit: advantages are normalised within a group, so a
group enters the ready list only when all G trajectories are in. Each trajectory keeps its
per-token versions; a group's age is set by its oldest generated token.

Invariants:
- every group id is in at most one of: pending (samples still running) or ready;
- a sample index is recorded at most once per group (`add` of a duplicate raises), so a retried
  episode can never be counted twice;
- `stale(v, eta)` lists ready groups whose oldest token is older than v - eta (in RL versions);
- `due(v, eta)` lists running groups that would be stale after the next update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kpop.rollout.agent_loop import Episode
from kpop.rollout.replay import RecordedTurn
from kpop.trajectory import Trajectory


@dataclass
class Group:
    group_id: str
    index: int                      # the sampler draw index (ledger key)
    episodes: list[Episode]
    trajs: dict[int, Trajectory] = field(default_factory=dict)
    base: int = 0                   # learner version that counts as RL version 0 for these tokens
    admitted: int = 0               # RL version when (re)submitted: no token of it is older
    prefixes: dict[int, tuple[RecordedTurn, ...]] = field(default_factory=dict)  # restored turns

    def restart(self, version: int, max_staleness: int) -> None:
        """Re-admit a group restored from a checkpoint at RL `version`: recorded prefixes already
        past the bound are dropped (those samples start from scratch); the rest keep their tokens,
        so the group counts as admitted when its oldest kept prefix token was sampled."""
        def oldest(turns: tuple[RecordedTurn, ...]) -> int:
            return min((v for t in turns for v in t.result.versions), default=version + self.base) - self.base

        self.prefixes = {k: p for k, p in self.prefixes.items() if version - oldest(p) <= max_staleness}
        self.admitted = min([version, *(oldest(p) for p in self.prefixes.values())])

    @property
    def complete(self) -> bool:
        return len(self.trajs) == len(self.episodes)

    def ordered(self) -> list[Trajectory]:
        return [self.trajs[k] for k in sorted(self.trajs)]

    def oldest_version(self) -> int:
        """Oldest RL version among generated tokens (a large number when none were generated)."""
        mins = [t.min_version() for t in self.trajs.values() if t.num_generated]
        return min(mins) - self.base if mins else 1 << 60

    def oldest_bound(self) -> int:
        """A lower bound on the oldest token version, also for samples still running."""
        return min(self.admitted, self.oldest_version())

    def generated_tokens(self) -> int:
        return sum(t.num_generated for t in self.trajs.values())


class GroupBuffer:
    def __init__(self) -> None:
        self.pending: dict[str, Group] = {}
        self.ready: list[Group] = []

    def open(self, group: Group) -> None:
        if group.group_id in self.pending or any(g.group_id == group.group_id for g in self.ready):
            raise ValueError(f"group {group.group_id} is already in the buffer")
        self.pending[group.group_id] = group

    def add(self, group_id: str, sample: int, traj: Trajectory) -> Group | None:
        """Record one sample; returns the group when this completes it (it moves to ready)."""
        group = self.pending[group_id]
        if sample in group.trajs:
            raise ValueError(f"sample {sample} of group {group_id} recorded twice")
        group.trajs[sample] = traj
        if not group.complete:
            return None
        del self.pending[group_id]
        self.ready.append(group)
        return group

    def stale(self, version: int, max_staleness: int) -> list[Group]:
        return [g for g in self.ready if version - g.oldest_version() > max_staleness]

    def due(self, version: int, max_staleness: int) -> list[Group]:
        """Pending groups that must be trained at this version: after the next update they would be
        older than the bound (their oldest possible token is at v - eta or earlier)."""
        return [g for g in self.pending.values() if g.oldest_bound() <= version - max_staleness]

    def remove(self, groups: list[Group]) -> None:
        ids = {g.group_id for g in groups}
        self.ready = [g for g in self.ready if g.group_id not in ids]

    def ready_tokens(self) -> int:
        return sum(g.generated_tokens() for g in self.ready)

    def __len__(self) -> int:
        return len(self.ready)
