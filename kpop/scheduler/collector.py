"""The collector: admission, dispatch, the buffer and failure recovery behind one small API.

    collector.resume(state, v, steps_left)   take over a checkpointed state (or none) and start
    groups = await collector.next_batch()   waits until the step budget is met
    collector.on_version(v)          after the step's weight update
    await collector.drain()          before a training round: every admitted group finishes
    collector.after_round(v, steps)  the round changed the policy: held groups re-run under v
    await collector.checkpoint_state(step)   SchedulerState for the checkpoint, with paused turns

Admission: whenever a group completes (and at start / after each version), new groups are drawn
from the sampler up to the staleness manager's capacity, so episodes keep running while the
learner trains (overlap), but not past the run's draw horizon (kpop.scheduler.horizon: no group
that no step of this run would train). A step may train on whichever groups finished first,
except that it waits for every running group that would fall past the bound with this update
(admitted at v - eta or earlier): slow groups get eta steps of head start instead of being thrown
away, and eta = 0 waits for everything (synchronous). Groups that still went stale (oldest
token older than v - eta, e.g. after a restore) are dropped from the buffer and re-run from
scratch under the same draw index: nothing is skipped, nothing trained twice. Dead engines
reported by workers are replaced in the background with the latest weights.

Training rounds (distillation, preference) change the policy outside the RL steps. The loop
gives the horizon only the steps up to the next round (kpop.stages.schedule.segment_end), drains,
runs the round and calls `after_round`: any group still held was generated before the round, so
it is re-run from scratch under the same index (as a stale group is), and versions are re-based
onto the engines' new one. Staleness thus keeps bounding the gap to the policy that trains.

Accounting invariant: every drawn index is in exactly one of {trained (ledger), ready, pending}.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from kpop.rollout.agent_loop import Episode
from kpop.rollout.replay import PartialEpisode
from kpop.scheduler.budget import StepBudget
from kpop.scheduler.buffer import Group, GroupBuffer
from kpop.scheduler.dispatcher import Dispatcher
from kpop.scheduler.dpr import DynamicPassRating
from kpop.scheduler.horizon import DrawHorizon
from kpop.scheduler.staleness import StalenessManager
from kpop.scheduler.state import SchedulerState, group_record, restore_group
from kpop.spec.run import KPopSchedulerSpec
from kpop.tasks import SamplerState, TaskSampler
from kpop.trajectory import Trajectory

log = logging.getLogger(__name__)


class Collector:
    def __init__(self, spec: KPopSchedulerSpec, sampler: TaskSampler, dpr: DynamicPassRating | None,
                 group_size: int, batch_groups: int, engines: list[Any], router: Any,
                 make_engine: Callable[[int], Any], dispatcher_args: dict) -> None:
        self.spec, self.sampler, self.dpr, self.group_size = spec, sampler, dpr, group_size
        self.batch_groups = batch_groups
        self.engines, self.router, self.make_engine = engines, router, make_engine
        self.generations = [0] * len(engines)  # the router's generation of each engine slot
        self.staleness = StalenessManager(spec.max_staleness, batch_groups, spec.max_concurrent)
        self.budget = StepBudget(spec.token_budget, batch_groups)
        self.buffer = GroupBuffer()
        self.horizon = DrawHorizon(None)
        self.step_waiting = False
        self.wake = asyncio.Event()
        self.dispatcher = Dispatcher(**dispatcher_args, on_result=self._on_result, wake=self.wake)
        self.base = 0
        self.weights_lock = asyncio.Lock()
        self.last_update = None
        self.replacing: dict[int, asyncio.Task] = {}
        self.counters = {"requeued": 0, "engine_restarts": 0, "replayable_turns": 0}
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ admission and results

    def resume(self, state: SchedulerState | None, engine_version: int, steps_left: int) -> None:
        """Take over a checkpointed scheduler state (None: a fresh run) and start dispatching.

        `engine_version` is the version the engines were just published at; the state's versions
        are re-based onto it (`base`), so staleness keeps counting RL steps across restarts. The
        draw horizon covers the `steps_left` steps, counting the restored groups first."""
        rl_version = state.rl_version if state else 0
        self.base = engine_version - rl_version
        pending: list[Group] = []
        if state is not None:
            self.sampler.restore(SamplerState(state.sampler_position, state.curriculum))
            self.staleness.recover(rl_version, state.accepted)
            self.buffer.ready = [restore_group(g, state.base, self.base) for g in state.ready]
            pending = [restore_group(g, state.base, self.base) for g in state.pending]
            self.counters.update({k: v for k, v in state.counters.items() if k in self.counters})
        self.horizon = DrawHorizon.for_run(steps_left, self.batch_groups, len(self.buffer.ready) + len(pending))
        self.start(pending)

    def start(self, pending: list[Group]) -> None:
        for group in pending:
            group.restart(self.staleness.version, self.spec.max_staleness)
            self.counters["replayable_turns"] += sum(len(p) for p in group.prefixes.values())
            self._submit(group)
        self._admit()

    def _admit(self) -> None:
        # Past the horizon only when a step waits on groups that nothing running will supply.
        starving = self.step_waiting and self.staleness.running == 0 and not self.budget.is_ready(self.buffer.ready)
        for _ in range(self.horizon.allow(self.staleness.capacity(), starving)):
            self.horizon.take()
            index, episodes = self.sampler.next_group(self.group_size)
            self._submit(Group(episodes[0].group_id, index, episodes, base=self.base, admitted=self.staleness.version))

    def _submit(self, group: Group) -> None:
        self.buffer.open(group)
        self.staleness.on_submit()
        for ep in group.episodes:
            if ep.sample not in group.trajs:
                self.dispatcher.submit(ep, group.prefixes.get(ep.sample, ()))

    def _on_result(self, episode: Episode, traj: Trajectory) -> None:
        group = self.buffer.add(episode.group_id, episode.sample, traj)
        if group is None:
            return
        self.staleness.on_accept()
        if self.dpr is not None:
            self.dpr.record(episode.env_name, episode.seed, [t.reward for t in group.ordered()])
        self._admit()

    def _requeue_stale(self) -> None:
        for group in self.buffer.stale(self.staleness.version, self.spec.max_staleness):
            self.buffer.remove([group])
            self.staleness.on_requeue()
            self.counters["requeued"] += 1
            self._submit(Group(group.group_id, group.index, group.episodes, base=self.base, admitted=self.staleness.version))

    # ------------------------------------------------------------------ the step boundary

    async def next_batch(self) -> list[Group]:
        """Wait until the budget is met; returns the groups (removed from the buffer)."""
        self.step_waiting = True
        try:
            return await self._wait_for_batch()
        finally:
            self.step_waiting = False

    async def _wait_for_batch(self) -> list[Group]:
        while True:
            self.wake.clear()
            if self.dispatcher.error or self.error:
                raise RuntimeError("rollout collection failed") from (self.dispatcher.error or self.error)
            await self._service_engines()
            # After the last await: a group that completed meanwhile is checked before selection.
            self._requeue_stale()
            self._admit()
            starved = self.staleness.running == 0 and self.staleness.capacity() == 0
            if (self.budget.is_ready(self.buffer.ready) and not self._due_running()) or (starved and self.buffer.ready):
                groups = self.budget.select(self.buffer.ready)
                self.buffer.remove(groups)
                return groups
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=self.spec.tail_check_s)
            except TimeoutError:
                pass
            if self.spec.tail_migration and len(self.engines) > 1:
                await self.router.migrate_tail.remote(self.spec.tail_min_age_s, self.spec.tail_max_moves)

    async def drain(self) -> None:
        """Wait until no admitted group is running (the horizon admits no new one between steps)."""
        while self.buffer.pending:
            self.wake.clear()
            if self.dispatcher.error or self.error:
                raise RuntimeError("rollout collection failed") from (self.dispatcher.error or self.error)
            await self._service_engines()
            if self.buffer.pending:
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=self.spec.tail_check_s)
                except TimeoutError:
                    pass

    def after_round(self, engine_version: int, steps_left: int) -> None:
        """The engines now hold a policy a training round produced (`engine_version`): re-base the
        versions onto it, re-run every held group under it, draw for the next `steps_left` steps."""
        assert not self.buffer.pending, "drain() before a round"
        self.base = engine_version - self.staleness.version
        held, self.buffer.ready = self.buffer.ready, []
        self.horizon = DrawHorizon.for_run(steps_left, self.batch_groups, len(held))
        for group in held:
            self.staleness.on_requeue()
            self.counters["requeued"] += 1
            self._submit(Group(group.group_id, group.index, group.episodes, base=self.base, admitted=self.staleness.version))
        self._admit()

    def _due_running(self) -> bool:
        """A running group would be too stale after this step's update: the step waits for it."""
        return bool(self.buffer.due(self.staleness.version, self.spec.max_staleness))

    def on_version(self, version: int) -> None:
        self.staleness.on_version(version)
        self._admit()

    # ------------------------------------------------------------------ weights and engines

    async def publish(self, learner: Any) -> int:
        """Push the learner's weights to every engine (each pauses with "keep", updates, resumes)."""
        from ray.exceptions import RayActorError

        update = await learner.publish.remote()
        async with self.weights_lock:
            self.last_update = update
            engines, generations = list(self.engines), list(self.generations)
            results = await asyncio.gather(*(e.update_weights.remote(update) for e in engines), return_exceptions=True)
        for i, (generation, res) in enumerate(zip(generations, results)):
            if isinstance(res, RayActorError):
                await self.router.report_dead.remote(i, generation)
            elif isinstance(res, BaseException):
                raise res
        return update.version

    async def _service_engines(self) -> None:
        for index in await self.router.dead.remote():
            if index not in self.replacing:
                self.replacing[index] = asyncio.create_task(self._replace_engine(index))

    async def _replace_engine(self, index: int) -> None:
        try:
            log.warning("engine %d died; starting a replacement", index)
            handle = await self._started_engine(index)
            async with self.weights_lock:
                if self.last_update is not None:
                    await handle.update_weights.remote(self.last_update)
                self.engines[index] = handle
                self.generations[index] = await self.router.replace.remote(index, handle)
            self.counters["engine_restarts"] += 1
        except BaseException as exc:  # noqa: BLE001 (surface through next_batch)
            self.error = self.error or exc
        finally:
            self.replacing.pop(index, None)
            self.wake.set()

    async def _started_engine(self, index: int) -> Any:
        """A started replacement for engine `index`. A replacement can die before it starts when Ray
        placed it on the node being lost (not yet declared dead): it is retried, at most
        scheduler.max_retries times, and lands elsewhere once the node is declared dead."""
        from ray.exceptions import RayActorError

        for attempt in range(self.spec.max_retries + 1):
            handle = self.make_engine(index)
            try:
                await handle.start.remote()
                return handle
            except RayActorError as exc:
                log.warning("replacement %d for engine %d died before it started (%s)", attempt + 1, index,
                            str(exc).splitlines()[0])
        raise RuntimeError(f"engine {index}: {self.spec.max_retries + 1} replacements died before they started")

    # ------------------------------------------------------------------ checkpoint

    async def checkpoint_state(self, step: int) -> SchedulerState:
        """The state to checkpoint, with the finished turns of running episodes. The turns are asked
        for first; the snapshot is then taken without an await in between, so it is consistent (a
        sample that finished meanwhile is in its group's trajs and its recorded turns are ignored)."""
        return self.snapshot(step, await self.dispatcher.partials())

    def snapshot(self, step: int, partials: list[PartialEpisode] = ()) -> SchedulerState:
        state = self.sampler.state()
        return SchedulerState(
            step=step, rl_version=self.staleness.version, base=self.base, sampler_position=state.position,
            curriculum=state.curriculum, accepted=self.staleness.accepted,
            ready=[group_record(g) for g in self.buffer.ready],
            pending=[group_record(g, partials) for g in self.buffer.pending.values()],
            counters={**self.counters, "worker_restarts": self.dispatcher.worker_restarts,
                      "retried": self.dispatcher.retried},
        )

    async def close(self) -> None:
        await self.dispatcher.cancel_all()
        for task in list(self.replacing.values()):
            task.cancel()
