"""The KPop loop (kpop.loop.kpop_loop with kpop.scheduler.collector), simulated.

The decisions are the real policy objects': admission by StalenessManager.capacity capped by
DrawHorizon.allow, groups in the real GroupBuffer (its duplicate check indexed), step readiness
and batch choice by StepBudget, the due rule by GroupBuffer.due, draws by the real TaskSampler
with the DynamicPassRating curriculum, tail moves by choose_migrations (through cluster.py).
This module is only the glue the Collector is, replayed on simulated time:

    on every completed group     staleness.on_accept, dpr.record, admit
    while a step waits           after every episode result (the collector's wake) and every
                                 tail_check_s: tail migration (if on and E > 1); after every
                                 completed group and every tick: admit, then fire when
                                 budget.is_ready(ready) and no running group is due,
                                 or when starved (nothing running, no capacity) with groups ready
    a step                       select + remove, learner_s, pause engines, publish_s, version + 1,
                                 staleness.on_version, admit

Two shortcuts keep a 1,024-engine run fast without changing any decision: the due test is
repeated only once every group it found due has completed (a due group stays due until it
completes: its oldest-token bound cannot rise while the version stands), and readiness is
tested only when a group completes or on a tick (nothing else changes the ready list).
The collector's stale-group re-run (needed after a restore) cannot trigger without restores:
the due rule keeps every trained token within eta; a batch breaking that raises.
"""

from __future__ import annotations

from kpop.rollout.agent_loop import Episode
from kpop.scheduler.budget import StepBudget
from kpop.scheduler.buffer import Group, GroupBuffer
from kpop.scheduler.dpr import DynamicPassRating
from kpop.scheduler.horizon import DrawHorizon
from kpop.scheduler.sim.clock import Clock
from kpop.scheduler.sim.cluster import Cluster, EpisodeRun
from kpop.scheduler.sim.run import SimResult, SimSetup
from kpop.scheduler.sim.workload import SimTrajectory
from kpop.scheduler.staleness import StalenessManager
from kpop.spec.envs import EnvEntrySpec
from kpop.spec.run import KPopSchedulerSpec
from kpop.tasks import TaskSampler


class IndexedBuffer(GroupBuffer):
    """The real buffer with its duplicate-id check on `open` kept, in O(1) instead of a scan of the
    ready list (thousands of groups at cluster scale); every other method is GroupBuffer's."""

    def __init__(self) -> None:
        super().__init__()
        self.ready_ids: set[str] = set()

    def open(self, group: Group) -> None:
        if group.group_id in self.pending or group.group_id in self.ready_ids:
            raise ValueError(f"group {group.group_id} is already in the buffer")
        self.pending[group.group_id] = group

    def add(self, group_id: str, sample: int, traj) -> Group | None:
        group = super().add(group_id, sample, traj)
        if group is not None:
            self.ready_ids.add(group_id)
        return group

    def remove(self, groups: list[Group]) -> None:
        super().remove(groups)
        self.ready_ids.difference_update(g.group_id for g in groups)


class KPopLoop:
    def __init__(self, setup: SimSetup, spec: KPopSchedulerSpec) -> None:
        self.setup, self.spec = setup, spec
        self.clock = Clock()
        self.cluster = Cluster(self.clock, setup.engines, setup.decode, setup.max_num_seqs)
        self.staleness = StalenessManager(spec.max_staleness, setup.batch_groups, spec.max_concurrent)
        self.budget = StepBudget(spec.token_budget, setup.batch_groups)
        self.buffer = IndexedBuffer()
        self.horizon = DrawHorizon.for_run(setup.steps, setup.batch_groups, 0)
        self.dpr = DynamicPassRating(spec.dpr) if spec.dpr.enabled else None
        self.sampler = TaskSampler([EnvEntrySpec(name=setup.env_name)], setup.seed, self.dpr,
                                   spec.dpr.revisit_prob if self.dpr else 0.0)
        self.migrating = spec.tail_migration and setup.engines > 1
        self.result = SimResult()
        self.waiting = False      # a step waits for its batch (Collector.step_waiting)
        self.due: set[str] = set()
        self.steps_done = 0
        self.finished = False

    def run(self) -> SimResult:
        self._admit()
        self._wait()
        self.clock.run(lambda: self.finished)
        self.result.wall_s = self.clock.now
        self.result.engine_idle = self.cluster.idle_fraction(self.clock.now)
        self.result.migrated, self.result.moved = self.cluster.migrated, self.cluster.moved
        return self.result

    # ------------------------------------------------------------------ admission and results

    def _admit(self) -> None:
        starving = self.waiting and self.staleness.running == 0 and not self.budget.is_ready(self.buffer.ready)
        for _ in range(self.horizon.allow(self.staleness.capacity(), starving)):
            self.horizon.take()
            index, episodes = self.sampler.next_group(self.setup.group_size)
            self.buffer.open(Group(episodes[0].group_id, index, episodes, admitted=self.staleness.version))
            self.staleness.on_submit()
            plans = self.setup.workload.plans(episodes[0].seed, index, len(episodes))
            for ep, plan in zip(episodes, plans):
                EpisodeRun(self.cluster, plan, ep.priority, lambda traj, ep=ep: self._on_result(ep, traj))

    def _on_result(self, ep: Episode, traj: SimTrajectory) -> None:
        group = self.buffer.add(ep.group_id, ep.sample, traj)
        if group is not None:
            self.staleness.on_accept()
            if self.dpr is not None:
                self.dpr.record(ep.env_name, ep.seed, [t.reward for t in group.ordered()])
            self.due.discard(group.group_id)
            self._admit()
        if self.waiting:
            if self.migrating:
                self.cluster.migrate_tail(self.spec.tail_min_age_s, self.spec.tail_max_moves)
            if group is not None:
                self._try_step()

    # ------------------------------------------------------------------ the step boundary

    def _wait(self) -> None:
        self.waiting, self.due = True, set()
        if self.migrating:
            self.clock.after(self.spec.tail_check_s, self._tick, self.steps_done)
        self._try_step()

    def _tick(self, step: int) -> None:
        if step != self.steps_done or not self.waiting:
            return
        self.cluster.migrate_tail(self.spec.tail_min_age_s, self.spec.tail_max_moves)
        self.clock.after(self.spec.tail_check_s, self._tick, step)
        self._try_step()

    def _try_step(self) -> None:
        self._admit()
        ready = self.buffer.ready
        starved = self.staleness.running == 0 and self.staleness.capacity() == 0
        if (self.budget.is_ready(ready) and not self._due_running()) or (starved and ready):
            groups = self.budget.select(ready)
            self.buffer.remove(groups)
            self._train(groups)

    def _due_running(self) -> bool:
        if not self.due:
            self.due = {g.group_id for g in self.buffer.due(self.staleness.version, self.spec.max_staleness)}
        return bool(self.due)

    def _train(self, groups: list[Group]) -> None:
        self.waiting = False
        version, eta = self.staleness.version, self.spec.max_staleness
        if any(version - g.oldest_version() > eta for g in groups):
            raise RuntimeError(f"a batch at version {version} holds tokens older than eta={eta}")
        self.result.record(groups, version)
        self.clock.after(self.setup.learner_s, self._publish)

    def _publish(self) -> None:
        self.cluster.pause()
        self.clock.after(self.setup.publish_s, self._published)

    def _published(self) -> None:
        version = self.staleness.version + 1
        self.cluster.publish(version)
        self.staleness.on_version(version)
        self.steps_done += 1
        self._admit()
        if self.steps_done == self.setup.steps:
            self.finished = True
        else:
            self._wait()
