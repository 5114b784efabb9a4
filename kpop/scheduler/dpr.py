"""Dynamic Pass Rating (DPR): a curriculum from each task's pass-rate history.

Every completed group reports its task's pass rate p (fraction of the G samples whose reward is
at least `pass_threshold`). The history keeps the last `window` rates per task. When the sampler
revisits a task of a family, it draws among that family's seen tasks with weights

    w(task) = solved_weight                    if mean rate >= solved_rate   (solved: down-weighted)
    w(task) = 1 + unstable_bonus * 4 p (1 - p)  otherwise                     (unsolved 1, unstable up to 1 + bonus)

where p is the mean of the task's history. The state is plain data (`state()` / `restore()`),
restored exactly on resume. Ties and order are deterministic: tasks are kept in first-seen order.
"""

from __future__ import annotations

import random
from collections import OrderedDict

from pydantic import BaseModel

from kpop.spec.run import DPRSpec


class TaskRecord(BaseModel):
    env_name: str
    seed: int
    rates: list[float]


class DPRState(BaseModel):
    tasks: list[TaskRecord] = []


class DynamicPassRating:
    def __init__(self, spec: DPRSpec) -> None:
        self.spec = spec
        self.tasks: OrderedDict[tuple[str, int], list[float]] = OrderedDict()

    def record(self, env_name: str, seed: int, rewards: list[float]) -> float:
        """Record one group's outcome; returns its pass rate."""
        rate = sum(r >= self.spec.pass_threshold for r in rewards) / max(len(rewards), 1)
        key = (env_name, seed)
        rates = self.tasks.setdefault(key, [])
        rates.append(rate)
        del rates[: -self.spec.window]
        while len(self.tasks) > self.spec.max_tracked:
            self.tasks.popitem(last=False)
        return rate

    def weight(self, rates: list[float]) -> float:
        p = sum(rates) / len(rates)
        if p >= self.spec.solved_rate:
            return self.spec.solved_weight
        return 1.0 + self.spec.unstable_bonus * 4.0 * p * (1.0 - p)

    def pick(self, env_name: str, rng: random.Random) -> int | None:
        """A seen task of `env_name` drawn by DPR weight, or None when there is none to revisit."""
        seeds = [(s, self.weight(r)) for (e, s), r in self.tasks.items() if e == env_name]
        if not seeds or sum(w for _, w in seeds) <= 0:
            return None
        return rng.choices([s for s, _ in seeds], weights=[w for _, w in seeds])[0]

    def stats(self) -> dict[str, float]:
        if not self.tasks:
            return {"dpr_tasks": 0.0, "dpr_solved": 0.0}
        solved = sum(sum(r) / len(r) >= self.spec.solved_rate for r in self.tasks.values())
        return {"dpr_tasks": float(len(self.tasks)), "dpr_solved": solved / len(self.tasks)}

    def state(self) -> DPRState:
        return DPRState(tasks=[TaskRecord(env_name=e, seed=s, rates=list(r)) for (e, s), r in self.tasks.items()])

    def restore(self, state: DPRState) -> None:
        self.tasks = OrderedDict(((t.env_name, t.seed), list(t.rates)) for t in state.tasks)
