"""Overlap dispatch: episodes run as asyncio tasks in the driver, each awaiting a worker's ObjectRef.

The loop submits episodes whenever admission capacity allows, including while the learner trains,
so engines and environment workers never drain at a step boundary. Each episode goes to the
environment worker with the fewest episodes in flight, with the engine router as its policy.

Failure handling: an episode whose worker dies (RayActorError) is re-run from scratch on a
replacement worker (the trajectory lived only in the dead worker; nothing of it reached the
buffer). `on_result` is called exactly once per episode that succeeds; an episode that fails
more than `max_retries` times, or raises anything else, is reported through `error` and the
loop stops. Invariant: every submitted episode ends in exactly one of on_result, cancel, error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from kpop.rollout.agent_loop import Episode
from kpop.rollout.engine import SamplingParams
from kpop.rollout.replay import PartialEpisode, RecordedTurn
from kpop.rollout.routing import Routed
from kpop.trajectory import Trajectory

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, workers: list[Any], router: Any, sampling: SamplingParams,
                 make_worker: Callable[[int], Any], max_retries: int,
                 on_result: Callable[[Episode, Trajectory], None], wake: asyncio.Event) -> None:
        self.workers = workers          # shared with RunContext: replacements show up there too
        self.router, self.sampling = router, sampling
        self.make_worker, self.max_retries = make_worker, max_retries
        self.on_result, self.wake = on_result, wake
        self.tasks: dict[tuple[str, int], asyncio.Task] = {}
        self.load = [0] * len(workers)
        self.error: BaseException | None = None
        self.worker_restarts = 0
        self.retried = 0

    def submit(self, episode: Episode, prefix: tuple[RecordedTurn, ...] = ()) -> None:
        key = (episode.group_id, episode.sample)
        if key in self.tasks:
            raise ValueError(f"episode {key} is already in flight")
        self.tasks[key] = asyncio.create_task(self._run(episode, prefix))

    @property
    def in_flight(self) -> int:
        return len(self.tasks)

    async def _run(self, episode: Episode, prefix: tuple[RecordedTurn, ...]) -> None:
        from ray.exceptions import RayActorError

        key = (episode.group_id, episode.sample)
        try:
            for attempt in range(self.max_retries + 1):
                slot = min(range(len(self.workers)), key=lambda i: (self.load[i], i))
                handle = self.workers[slot]
                self.load[slot] += 1
                try:
                    traj = await handle.rollout.remote(episode, Routed(self.router), self.sampling, prefix)
                except RayActorError:
                    self._replace_worker(slot, handle)
                    self.retried += attempt < self.max_retries
                    continue
                finally:
                    self.load[slot] -= 1
                del self.tasks[key]
                self.on_result(episode, traj)
                return
            raise RuntimeError(f"episode {key} failed {self.max_retries + 1} times: environment workers keep dying")
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 (any other failure stops the run, loudly)
            self.error = self.error or exc
            self.tasks.pop(key, None)
        finally:
            self.wake.set()

    def _replace_worker(self, slot: int, dead: Any) -> None:
        if self.workers[slot] is dead:  # the first episode to notice replaces it; others reuse it
            log.warning("environment worker %d died; starting a replacement", slot)
            self.workers[slot] = self.make_worker(slot)
            self.worker_restarts += 1

    async def partials(self, timeout_s: float = 10.0) -> list[PartialEpisode]:
        """Finished turns of the episodes running on the workers (the checkpoint keeps those of its
        pending groups' unfinished samples). Best effort: a worker that is dead or slow to answer
        contributes nothing (its episodes then restart from scratch)."""
        async def ask(handle) -> list[PartialEpisode]:
            try:
                return await asyncio.wait_for(handle.partials.remote(), timeout_s)
            except Exception:  # noqa: BLE001 (any failure only loses the optional prefixes)
                return []

        lists = await asyncio.gather(*(ask(h) for h in list(self.workers)))
        return [p for part in lists for p in part]

    async def cancel_all(self) -> None:
        tasks = list(self.tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()
