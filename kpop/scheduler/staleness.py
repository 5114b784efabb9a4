"""Admission control: how many more groups may start now without breaking the staleness bound.

AReaL's capacity, in groups (B = groups per optimisation step, v = optimisation steps done,
eta = max staleness):

    capacity = min(max_concurrent - running, (eta_v + v + 1) * B - (accepted + running))
    eta_v    = min(eta, v + 1)

The window opens one version per step (eta_v): before the first update every admitted group
samples with version-0 weights; one batch ahead keeps the engines busy through the first learner
step, and admitting all eta + 1 batches at once only adds a burst of episodes that slows the
first batch (and gives those groups the oldest tokens of the run).

`accepted` counts groups that completed and were kept (consumed or still buffered); `running`
counts groups in flight. With eta = 0 exactly B groups are admitted per version and none more
until the step that consumes them: synchronous RL. A group that is discarded (too stale) or
re-run gives its slot back (`on_requeue`).

Invariant: accepted + running <= (eta_v + v + 1) * B at all times. `recover` restores the counters
from a checkpoint so capacity after a restore equals capacity before it (no burst).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StalenessManager:
    max_staleness: int
    batch_groups: int
    max_concurrent: int
    version: int = 0
    accepted: int = 0
    running: int = 0

    def capacity(self) -> int:
        by_concurrency = self.max_concurrent - self.running
        eta = min(self.max_staleness, self.version + 1)
        by_staleness = (eta + self.version + 1) * self.batch_groups - (self.accepted + self.running)
        return max(0, min(by_concurrency, by_staleness))

    def on_submit(self, n: int = 1) -> None:
        self.running += n

    def on_accept(self) -> None:
        """A running group completed and entered the buffer."""
        self.running -= 1
        self.accepted += 1

    def on_requeue(self) -> None:
        """An accepted group was dropped to be re-run: its slot is free again."""
        self.accepted -= 1

    def on_version(self, version: int) -> None:
        self.version = version

    def recover(self, version: int, accepted: int) -> None:
        """After a restore: the saved version and accepted count; in-flight groups re-submit."""
        self.version, self.accepted, self.running = version, accepted, 0
