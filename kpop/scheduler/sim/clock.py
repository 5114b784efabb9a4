"""The event heap: callbacks ordered by simulated time, ties in scheduling order.

Invariant: `now` never decreases; a callback scheduled for a time before `now` raises.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.heap: list[tuple[float, int, Callable, tuple]] = []
        self.order = itertools.count()

    def at(self, t: float, fn: Callable, *args) -> None:
        if t < self.now:
            raise ValueError(f"event at {t} is before now ({self.now})")
        heapq.heappush(self.heap, (t, next(self.order), fn, args))

    def after(self, dt: float, fn: Callable, *args) -> None:
        self.at(self.now + dt, fn, *args)

    def run(self, done: Callable[[], bool]) -> None:
        """Runs events until `done()`; an empty heap before that is a stalled simulation."""
        while not done():
            if not self.heap:
                raise RuntimeError(f"simulation stalled at t={self.now:.3f}: nothing left to happen")
            t, _, fn, args = heapq.heappop(self.heap)
            self.now = t
            fn(*args)
