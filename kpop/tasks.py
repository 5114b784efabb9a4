"""Task sampling: which (environment, seed) pairs a run trains and evaluates on.

Training seeds and held-out seeds come from disjoint ranges, so evaluation never sees a training
task. The sampler is a pure function of (run seed, position): `state()` / `restore()` capture the
position, so a resumed run continues exactly where it stopped, skipping and repeating nothing.

With a curriculum (kpop.scheduler.dpr.DynamicPassRating) a training draw may revisit a seen task
of the drawn family instead of a fresh seed; the revisit decision uses its own seeded stream, so
draws stay a pure function of (run seed, position, curriculum state), and the curriculum state is
part of `state()`. Every draw index is handed out exactly once: it is the ledger key of a group.
A sampler's `stream` names its draws: the training rounds (kpop.stages) draw from their own streams,
so a run's RL tasks are the same with and without them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kpop.rollout.agent_loop import Episode
from kpop.spec.envs import EnvEntrySpec

if TYPE_CHECKING:
    from kpop.scheduler.dpr import DPRState, DynamicPassRating

HELD_OUT_BASE = 1 << 30


@dataclass(frozen=True)
class SamplerState:
    position: int
    curriculum: DPRState | None = None


class TaskSampler:
    def __init__(self, envs: list[EnvEntrySpec], seed: int, curriculum: DynamicPassRating | None = None,
                 revisit_prob: float = 0.0, stream: str = "train") -> None:
        self.names = [e.name for e in envs]
        total = sum(e.weight for e in envs)
        self.weights = [e.weight / total for e in envs]
        self.seed, self.stream = seed, stream
        self.position = 0
        self.curriculum, self.revisit_prob = curriculum, revisit_prob

    def _task(self, index: int, held_out: bool) -> tuple[str, int]:
        rng = random.Random(f"{self.seed}:{'eval' if held_out else self.stream}:{index}")
        name = rng.choices(self.names, weights=self.weights)[0]
        base = HELD_OUT_BASE if held_out else 0
        seed = base + rng.randrange(HELD_OUT_BASE)
        if held_out or self.curriculum is None:
            return name, seed
        revisit = random.Random(f"{self.seed}:dpr:{index}")
        if revisit.random() < self.revisit_prob:
            seen = self.curriculum.pick(name, revisit)
            if seen is not None:
                return name, seen
        return name, seed

    def next_groups(self, num_tasks: int, group_size: int) -> list[list[Episode]]:
        """The next `num_tasks` training tasks, each repeated `group_size` times as one group."""
        return [self.next_group(group_size)[1] for _ in range(num_tasks)]

    def next_group(self, group_size: int) -> tuple[int, list[Episode]]:
        """The next training task as (draw index, its group of `group_size` episodes)."""
        index = self.position
        name, seed = self._task(index, held_out=False)
        gid = f"{name}:{seed}:{index}"
        self.position += 1
        # The draw index is the engine priority: the oldest groups generate first, matching the
        # oldest-first step selection and the staleness bound's due rule.
        return index, [Episode(name, seed, gid, sample=k, priority=index) for k in range(group_size)]

    def held_out(self, num_tasks: int) -> list[Episode]:
        out = []
        for i in range(num_tasks):
            name, seed = self._task(i, held_out=True)
            out.append(Episode(name, seed, f"eval:{name}:{seed}"))
        return out

    def state(self) -> SamplerState:
        return SamplerState(self.position, self.curriculum.state() if self.curriculum else None)

    def restore(self, state: SamplerState) -> None:
        self.position = state.position
        if self.curriculum is not None and state.curriculum is not None:
            self.curriculum.restore(state.curriculum)
