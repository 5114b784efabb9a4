"""Engine utilisation: the fraction of time each engine has requests in flight.

A background thread polls every engine's `load()` (cheap, never blocks the engine) every
`interval_s`; an engine is busy in a sample when it has a running or waiting request. The driver
reads `window()` (utilisation since the previous call, for per-step metrics) and `total()` (since
start or `reset()`). Works for any loop: it needs only a callable returning the current engine
handles, so replaced engines are followed. Samples of an engine that fails to answer are skipped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class EngineMonitor:
    def __init__(self, engines: Callable[[], list[Any]], interval_s: float = 0.1) -> None:
        self.engines, self.interval_s = engines, interval_s
        self.lock = threading.Lock()
        self.busy = self.samples = self.win_busy = self.win_samples = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._poll, name="engine-monitor", daemon=True)

    def start(self) -> EngineMonitor:
        self.thread.start()
        return self

    def _poll(self) -> None:
        import ray

        while not self.stop_event.wait(self.interval_s):
            for handle in list(self.engines()):
                try:
                    load = ray.get(handle.load.remote(), timeout=5)
                except Exception:  # noqa: BLE001, S112 (a dead or restarting engine: no sample)
                    continue
                busy = int(load.running + load.waiting > 0)
                with self.lock:
                    self.busy += busy
                    self.samples += 1
                    self.win_busy += busy
                    self.win_samples += 1

    def window(self) -> float:
        with self.lock:
            out = self.win_busy / self.win_samples if self.win_samples else 0.0
            self.win_busy = self.win_samples = 0
        return out

    def total(self) -> float:
        with self.lock:
            return self.busy / self.samples if self.samples else 0.0

    def reset(self) -> None:
        with self.lock:
            self.busy = self.samples = self.win_busy = self.win_samples = 0

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)
