"""The engine router: one small async actor through which environment workers reach engines.

Workers ask `acquire(request_id, exclude)` for an engine before each generation and `release`
after; the router places requests on the least-loaded alive engine, so replicas fill evenly.

Contract:
It implements kpop.rollout.routing.RouterAPI (`acquire` returns an `EngineLease`).
- `report_dead(index, generation)`: a worker saw the engine at `index` die (RayActorError); it is
  skipped until the driver `replace`s it, which starts the slot's next generation. The generation
  guards against a late report marking the replacement dead.
- `acquire` waits while no engine is alive (the driver is starting a replacement).
- `migrate_tail(...)` applies kpop.scheduler.tail: aborts the chosen requests on their congested
  engine; their workers resume them from the prefix elsewhere (`exclude` = the old engine).
- `dead()` lists the indices waiting for a replacement; `live_requests()` and `stats()` report
  (`migrated`: aborts issued; `moved`: migrated turns that continued on another engine).
"""

from __future__ import annotations

import asyncio
import time

import ray

from kpop.rollout.routing import EngineLease
from kpop.scheduler.tail import LiveRequest, choose_migrations


class _EngineRouter:
    def __init__(self, engines: list) -> None:
        self.engines = list(engines)
        self.generations = [0] * len(self.engines)
        self.dead_set: set[int] = set()
        self.live: dict[str, tuple[int, float]] = {}
        self.changed = asyncio.Event()
        self.migrated = 0
        self.moved = 0      # migrated turns that continued on another engine (acquired with exclude)

    async def acquire(self, request_id: str, exclude: int | None = None) -> EngineLease:
        while True:
            alive = [i for i in range(len(self.engines)) if i not in self.dead_set]
            choices = [i for i in alive if i != exclude] or alive
            if choices:
                load = {i: 0 for i in choices}
                for i, _ in self.live.values():
                    if i in load:
                        load[i] += 1
                best = min(choices, key=lambda i: (load[i], i))
                self.moved += exclude is not None and best != exclude
                self.live[request_id] = (best, time.monotonic())
                return EngineLease(best, self.engines[best], self.generations[best])
            self.changed.clear()
            await self.changed.wait()

    def release(self, request_id: str) -> None:
        self.live.pop(request_id, None)

    def report_dead(self, index: int, generation: int) -> None:
        if self.generations[index] == generation:
            self.dead_set.add(index)

    def replace(self, index: int, handle) -> int:
        """Put a new engine in slot `index`; returns the slot's new generation."""
        self.engines[index] = handle
        self.generations[index] += 1
        self.dead_set.discard(index)
        self.changed.set()
        return self.generations[index]

    def dead(self) -> list[int]:
        return sorted(self.dead_set)

    async def migrate_tail(self, min_age_s: float, max_moves: int) -> int:
        now = time.monotonic()
        live = [LiveRequest(rid, i, now - t0) for rid, (i, t0) in self.live.items()]
        alive = [i for i in range(len(self.engines)) if i not in self.dead_set]
        moves = choose_migrations(live, alive, min_age_s, max_moves)
        for r in moves:
            # The request's worker sees finish_reason "abort" and resumes from its prefix elsewhere.
            await self.engines[r.engine].abort.remote(r.request_id)
            self.live.pop(r.request_id, None)
        self.migrated += len(moves)
        return len(moves)

    def live_requests(self) -> dict[str, int]:
        """request id -> engine index of every request in flight."""
        return {rid: i for rid, (i, _) in self.live.items()}

    def stats(self) -> dict[str, int]:
        return {"live": len(self.live), "migrated": self.migrated, "moved": self.moved, "dead": len(self.dead_set)}


EngineRouter = ray.remote(num_cpus=0, max_concurrency=10_000)(_EngineRouter)
