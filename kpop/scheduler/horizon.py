"""The draw horizon: how many fresh groups a run may still draw before its last step.

A run of N steps of B groups trains N * B groups. Admission by staleness alone keeps drawing up
to eta batches ahead to the very end, so the last steps share the engines with groups that no
step of this run will train (in a 16-step benchmark run at eta = 4, about a fifth of all
generation). Those groups are not lost (they stay in the checkpoint's buffer for an extended
run), but they slow the tail groups the last steps wait for.

    left = (steps_left * B) - (groups already ready or pending at start)

`allow(capacity, starving)` caps admission at `left`. With a token budget (Phi > 0) a step may
take more than B groups, so the horizon can run out early: when the loop is starving (nothing
running and the ready groups cannot meet the budget) the cap is lifted, so a run never stalls on
it. `None` means no horizon (unbounded admission).

Invariant: fresh draws <= left, except while starving.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DrawHorizon:
    left: int | None

    @classmethod
    def for_run(cls, steps_left: int, batch_groups: int, held: int) -> DrawHorizon:
        """`held`: groups already drawn and not yet trained (restored ready and pending)."""
        return cls(max(0, steps_left * batch_groups - held))

    def allow(self, capacity: int, starving: bool) -> int:
        if self.left is None or starving:
            return capacity
        return min(capacity, self.left)

    def take(self, n: int = 1) -> None:
        if self.left is not None:
            self.left = max(0, self.left - n)
