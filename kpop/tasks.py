"""Task sampling: which (environment, seed) pairs a run trains and evaluates on.

Training seeds and held-out seeds come from disjoint ranges, so evaluation never sees a training
task. The sampler is a pure function of (run seed, position): `state()` / `restore()` capture the
position, so a resumed run continues exactly where it stopped, skipping and repeating nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kpop.rollout.agent_loop import Episode
from kpop.spec.envs import EnvEntrySpec

HELD_OUT_BASE = 1 << 30


@dataclass(frozen=True)
class SamplerState:
    position: int


class TaskSampler:
    def __init__(self, envs: list[EnvEntrySpec], seed: int) -> None:
        self.names = [e.name for e in envs]
        total = sum(e.weight for e in envs)
        self.weights = [e.weight / total for e in envs]
        self.seed = seed
        self.position = 0

    def _task(self, index: int, held_out: bool) -> tuple[str, int]:
        rng = random.Random(f"{self.seed}:{'eval' if held_out else 'train'}:{index}")
        name = rng.choices(self.names, weights=self.weights)[0]
        base = HELD_OUT_BASE if held_out else 0
        return name, base + rng.randrange(HELD_OUT_BASE)

    def next_groups(self, num_tasks: int, group_size: int) -> list[list[Episode]]:
        """The next `num_tasks` training tasks, each repeated `group_size` times as one group."""
        groups = []
        for _ in range(num_tasks):
            name, seed = self._task(self.position, held_out=False)
            gid = f"{name}:{seed}:{self.position}"
            groups.append([Episode(name, seed, gid, sample=k) for k in range(group_size)])
            self.position += 1
        return groups

    def held_out(self, num_tasks: int) -> list[Episode]:
        out = []
        for i in range(num_tasks):
            name, seed = self._task(i, held_out=True)
            out.append(Episode(name, seed, f"eval:{name}:{seed}"))
        return out

    def state(self) -> SamplerState:
        return SamplerState(self.position)

    def restore(self, state: SamplerState) -> None:
        self.position = state.position
