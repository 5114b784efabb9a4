"""Simulated tasks: how an episode unfolds, how many tokens each turn generates, how long each
environment step waits.

The shape is the async benchmark's `slow_calculator` (benchmarks/async_speedup.py), the workload
the simulation is validated against:
- a task (env, seed) draws its turn budget T from `target_turns` (P(1) = 0.6, P(2) = 0.2,
  P(3) = 0.1, P(6) = 0.1) and its success chance p (Beta(p k, (1 - p) k) around `success`,
  or exactly `success` when k = 0);
- a sample calls the tool (`call_tokens`), then answers (`answer_tokens`); a wrong answer while
  fewer than T environment steps have run earns "try again" and another answer, up to
  `max_turns` model turns; reward 1 for a right answer, else 0;
- environment step k of a task waits `latency.draw(Random(f"{seed}/{k}"))`, so the G samples of a
  group wait alike: a mixture of uniform bands plus an optional Pareto tail, capped at the step
  timeout. With the benchmark's bands ((0.2, 1.5, 4.0), (0.8, 0.05, 0.3)) and the same seeding,
  a task's latencies and turn budget (Random(seed).choices) are exactly the benchmark's;
- `long_turns` optionally replaces a turn's token count by a Pareto draw (long generations).

A group's plans are a pure function of (seed, draw index, G): sync and KPop runs face the same
episodes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ParetoTail:
    """With probability `prob` a draw is replaced by  min(cap, scale * U^(-1/alpha)),  U ~ U(0, 1]."""

    prob: float = 0.0
    scale: float = 1.0
    alpha: float = 1.5
    cap: float = 1.0

    def apply(self, value: float, rng: random.Random) -> float:
        if self.prob > 0 and rng.random() < self.prob:
            return min(self.cap, self.scale * (1.0 - rng.random()) ** (-1.0 / self.alpha))
        return value


@dataclass(frozen=True)
class StepLatency:
    bands: tuple[tuple[float, float, float], ...]  # (weight, low_s, high_s)
    tail: ParetoTail = ParetoTail()

    def draw(self, rng: random.Random) -> float:
        u = rng.random() * sum(w for w, _, _ in self.bands)
        band = self.bands[-1]
        for candidate in self.bands:
            if u < candidate[0]:
                band = candidate
                break
            u -= candidate[0]
        return self.tail.apply(rng.uniform(band[1], band[2]), rng)


@dataclass(frozen=True)
class EpisodePlan:
    tokens: tuple[int, ...]       # generated tokens of each model turn
    latency_s: tuple[float, ...]  # the environment step after each turn
    reward: float


@dataclass(frozen=True)
class SimTrajectory:
    """The part of a Trajectory the scheduler reads (kpop.scheduler.buffer.Group, DPR)."""

    versions: dict[int, float]    # generated tokens per policy version
    num_generated: int
    reward: float
    num_turns: int
    oldest: int                   # oldest version among generated tokens

    def min_version(self) -> int:
        return self.oldest


@dataclass(frozen=True)
class Workload:
    latency: StepLatency
    call_tokens: int
    answer_tokens: int
    success: float
    concentration: float = 0.0
    target_turns: tuple[tuple[int, float], ...] = ((1, 6.0), (2, 2.0), (3, 1.0), (6, 1.0))
    max_turns: int = 6
    long_turns: ParetoTail = field(default_factory=ParetoTail)

    def plans(self, seed: int, draw: int, samples: int) -> list[EpisodePlan]:
        """The episodes of one group: task `seed`, drawn as draw index `draw`, sampled `samples` times
        (a task revisited by the curriculum keeps its turn budget, success chance and latencies)."""
        task = random.Random(seed)
        target = task.choices([t for t, _ in self.target_turns], weights=[w for _, w in self.target_turns])[0]
        p = self.success
        if self.concentration > 0:
            p = task.betavariate(p * self.concentration, (1.0 - p) * self.concentration)
        rng = random.Random((seed << 32) | draw)
        episodes = [self._episode(target, p, rng) for _ in range(samples)]
        latency = [self.latency.draw(random.Random(f"{seed}/{k}")) for k in range(max(len(t) for t, _ in episodes))]
        return [EpisodePlan(tokens, tuple(latency[: len(tokens)]), reward) for tokens, reward in episodes]

    def _episode(self, target: int, p: float, rng: random.Random) -> tuple[tuple[int, ...], float]:
        tokens, right = [self._tokens(self.call_tokens, rng)], False
        while len(tokens) < self.max_turns:
            tokens.append(self._tokens(self.answer_tokens, rng))
            right = rng.random() < p
            if right or len(tokens) >= target:
                break
        return tuple(tokens), 1.0 if right else 0.0

    def _tokens(self, n: int, rng: random.Random) -> int:
        return max(1, round(self.long_turns.apply(float(n), rng)))
