"""A simulated run: what it is given (`SimSetup`) and what it reports (`SimResult`).

SimSetup: E engines with one decode curve and `max_num_seqs` each; `steps` optimisation steps of
B groups x G samples; a learner step of `learner_s` seconds, then a weight push of `publish_s`
seconds during which every engine is paused; the workload; the sampler seed.

SimResult, measured over the RL phase (t = 0 to the last publish):
    wall_s          simulated seconds
    engine_idle     1 - (engine-seconds with a request running or waiting) / (E * wall_s)
    staleness_hist  trained generated tokens by version gap (version trained at - version sampled)
    trained         draw indices in training order (the ledger: each index exactly once)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kpop.scheduler.buffer import Group
from kpop.scheduler.sim.decode import DecodeCurve
from kpop.scheduler.sim.workload import Workload


@dataclass(frozen=True)
class SimSetup:
    engines: int
    steps: int
    batch_groups: int
    group_size: int
    workload: Workload
    decode: DecodeCurve
    learner_s: float
    publish_s: float
    max_num_seqs: int = 128
    seed: int = 3
    env_name: str = "slow_calculator"


@dataclass
class SimResult:
    wall_s: float = 0.0
    engine_idle: float = 0.0
    staleness_hist: list[float] = field(default_factory=list)
    trained: list[int] = field(default_factory=list)
    samples: int = 0
    migrated: int = 0
    moved: int = 0

    def record(self, groups: list[Group], version: int) -> None:
        """One step's batch, trained at RL version `version`."""
        for g in groups:
            self.trained.append(g.index)
            for traj in g.trajs.values():
                self.samples += 1
                for v, n in traj.versions.items():
                    gap = version - v
                    self.staleness_hist.extend([0.0] * (gap + 1 - len(self.staleness_hist)))
                    self.staleness_hist[gap] += n

    @property
    def staleness_mean(self) -> float:
        total = sum(self.staleness_hist)
        return sum(g * n for g, n in enumerate(self.staleness_hist)) / total if total else 0.0

    @property
    def staleness_max(self) -> int:
        return max((g for g, n in enumerate(self.staleness_hist) if n > 0), default=0)
