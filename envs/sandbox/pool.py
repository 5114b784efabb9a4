"""A pool of warm sandboxes: caps concurrency, queues the rest, reports the queueing.

Contract: `SandboxPool.run` behaves like `Sandbox.run`; at most `size` executions run at once and
later requests wait in FIFO order. A request without limits gets the pool's default limits.
Reuse is safe because each backend instance starts every execution from fresh namespaces and a
fresh work directory (what is reused is its slot: uid, cgroups, a Docker client), or, in the warm
modes, from a sandbox reset to its starting state (bwrap_warm.py, docker_warm.py). A sandbox that
reports `reusable = False` (a process survived its end-of-run kill) is closed and replaced.
Slot numbers are unique among the live pools of this process, so their uids and cgroups differ.
The pool is not tied to one event loop, but must not be used from two loops at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from kpop.envs.sandbox.api import Sandbox, SandboxLimits, SandboxRequest, SandboxResult

log = logging.getLogger(__name__)
_slots_lock = threading.Lock()
_slots_used: set[int] = set()


def _take_slot() -> int:
    with _slots_lock:
        slot = next(i for i in range(len(_slots_used) + 1) if i not in _slots_used)
        _slots_used.add(slot)
        return slot


def _give_slot(slot: int) -> None:
    with _slots_lock:
        _slots_used.discard(slot)


@dataclass(frozen=True)
class PoolStats:
    size: int
    busy: int
    waiting: int  # requests queued right now
    runs: int
    queued_runs: int  # runs that had to wait for a free sandbox
    mean_wait_ms: float
    max_wait_ms: float


class SandboxPool:
    name = "pool"

    def __init__(self, factory: Callable[[int], Sandbox], size: int = 4, default_limits: SandboxLimits | None = None) -> None:
        if size < 1:
            raise ValueError("pool size must be >= 1")
        self.size, self.default_limits, self._factory = size, default_limits or SandboxLimits(), factory
        self._idle: list[tuple[int, Sandbox]] = []
        self._live = 0
        self._waiters: deque[asyncio.Future] = deque()
        self._runs = self._queued = 0
        self._wait_total = self._wait_max = 0.0
        self._closed = False

    def stats(self) -> PoolStats:
        waiting = sum(1 for w in self._waiters if not w.done())
        busy = self._live - len(self._idle)
        mean = 1000 * self._wait_total / self._runs if self._runs else 0.0
        return PoolStats(self.size, busy, waiting, self._runs, self._queued, mean, 1000 * self._wait_max)

    async def run(self, request: SandboxRequest) -> SandboxResult:
        if request.limits is None:
            request = replace(request, limits=self.default_limits)
        start = time.perf_counter()
        slot, box = await self._acquire()
        waited = time.perf_counter() - start
        self._runs += 1
        self._wait_total += waited
        self._wait_max = max(self._wait_max, waited)
        if waited > 0.05:
            log.debug("sandbox pool: waited %.1f ms for a free sandbox (%s)", 1000 * waited, self.stats())
        try:
            return await box.run(request)
        finally:
            await self._release(slot, box)

    async def _acquire(self) -> tuple[int, Sandbox]:
        if self._closed:
            raise RuntimeError("sandbox pool is closed")
        if self._idle:
            return self._idle.pop()
        if self._live < self.size:
            self._live += 1
            slot = _take_slot()
            try:
                return slot, self._factory(slot)
            except BaseException:
                self._live -= 1
                _give_slot(slot)
                raise
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._queued += 1
        return await waiter

    async def _release(self, slot: int, box: Sandbox) -> None:
        if not getattr(box, "reusable", True) or self._closed:
            self._live -= 1
            await box.close()
            _give_slot(slot)
            log.warning("sandbox pool: retired slot %d (a process outlived its run)", slot) if not self._closed else None
            if self._waiters and self._live < self.size:
                self._live += 1
                slot = _take_slot()
                box = self._factory(slot)
            else:
                return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done() and not waiter.get_loop().is_closed():
                waiter.set_result((slot, box))
                return
        self._idle.append((slot, box))

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for slot, box in idle:
            self._live -= 1
            await box.close()
            _give_slot(slot)
