"""The synchronous loop (kpop.loop.sync), simulated.

Each step draws B groups of G, runs all B * G episodes with episode i of the step pinned to
engine i mod E (RunContext.rollout), waits for the last one, trains for learner_s and publishes
for publish_s. Hence

    wall_s = sum over steps of (slowest episode of the step + learner_s + publish_s)

and every token is trained at the version that sampled it (gap 0). Like the real loop, it has
no curriculum (DPR is the KPop collector's) and no tail migration.
"""

from __future__ import annotations

from kpop.rollout.agent_loop import Episode
from kpop.scheduler.buffer import Group
from kpop.scheduler.sim.clock import Clock
from kpop.scheduler.sim.cluster import Cluster, EpisodeRun
from kpop.scheduler.sim.run import SimResult, SimSetup
from kpop.scheduler.sim.workload import SimTrajectory
from kpop.spec.envs import EnvEntrySpec
from kpop.tasks import TaskSampler


class SyncLoop:
    def __init__(self, setup: SimSetup) -> None:
        self.setup = setup
        self.clock = Clock()
        self.cluster = Cluster(self.clock, setup.engines, setup.decode, setup.max_num_seqs)
        self.sampler = TaskSampler([EnvEntrySpec(name=setup.env_name)], setup.seed)
        self.result = SimResult()
        self.groups: list[Group] = []
        self.outstanding = self.version = 0
        self.finished = False

    def run(self) -> SimResult:
        self._draw()
        self.clock.run(lambda: self.finished)
        self.result.wall_s = self.clock.now
        self.result.engine_idle = self.cluster.idle_fraction(self.clock.now)
        return self.result

    def _draw(self) -> None:
        s = self.setup
        self.groups = [Group(eps[0].group_id, index, eps) for index, eps in
                       (self.sampler.next_group(s.group_size) for _ in range(s.batch_groups))]
        self.outstanding = s.batch_groups * s.group_size
        runs = [(g, ep, plan) for g in self.groups
                for ep, plan in zip(g.episodes, s.workload.plans(g.episodes[0].seed, g.index, s.group_size))]
        for i, (group, ep, plan) in enumerate(runs):
            EpisodeRun(self.cluster, plan, ep.priority, lambda traj, g=group, ep=ep: self._done(g, ep, traj),
                       engine=i % s.engines)

    def _done(self, group: Group, ep: Episode, traj: SimTrajectory) -> None:
        group.trajs[ep.sample] = traj
        self.outstanding -= 1
        if self.outstanding == 0:
            self.result.record(self.groups, self.version)
            self.clock.after(self.setup.learner_s, self._publish)

    def _publish(self) -> None:
        self.cluster.pause()
        self.clock.after(self.setup.publish_s, self._published)

    def _published(self) -> None:
        self.version += 1
        self.cluster.publish(self.version)
        if self.version == self.setup.steps:
            self.finished = True
        else:
            self._draw()
