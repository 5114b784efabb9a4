"""When an optimisation step fires and which ready groups it trains on.

Two modes:
- token budget Phi > 0 (C3PO++): the step fires once ready groups hold >= Phi generated tokens; it
  takes groups oldest-first until their tokens reach Phi (the last group is taken whole);
- Phi = 0: the step fires once B groups are ready and takes the B oldest.
Oldest-first (by the group's oldest token version, then arrival) trains the groups closest to
the staleness bound before they expire. When nothing else can arrive (no group running and no
admission capacity) the loop trains on whatever is ready (`select` then returns all of it), so
a budget larger than what one version may admit cannot deadlock the run.
"""

from __future__ import annotations

from dataclasses import dataclass

from kpop.scheduler.buffer import Group


@dataclass(frozen=True)
class StepBudget:
    token_budget: int
    batch_groups: int

    def is_ready(self, ready: list[Group]) -> bool:
        if not ready:
            return False
        if self.token_budget > 0:
            return sum(g.generated_tokens() for g in ready) >= self.token_budget
        return len(ready) >= self.batch_groups

    def select(self, ready: list[Group]) -> list[Group]:
        ordered = sorted(enumerate(ready), key=lambda p: (p[1].oldest_version(), p[0]))
        groups = [g for _, g in ordered]
        if self.token_budget <= 0:
            return groups[: self.batch_groups]
        out, tokens = [], 0
        for g in groups:
            if tokens >= self.token_budget:
                break
            out.append(g)
            tokens += g.generated_tokens()
        return out
