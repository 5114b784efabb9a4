"""The typed interface between environment workers and an engine router.

A worker's generation target is an engine (an `Engine` or its Ray actor handle) or `Routed`: a
router actor that places each request on one of several engines (kpop.scheduler.router). A routed
turn talks to the router through `RouterAPI` only:

- `acquire(request_id, exclude)` -> `EngineLease`: the engine chosen for one request (never the
  index `exclude` while another engine is alive); waits while no engine is alive.
- `release(request_id)`: the request finished (or failed) on its lease's engine.
- `report_dead(index, generation)`: the leased engine died. `generation` counts the replacements of
  the engine at `index`, so a late report about an engine that was already replaced is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class EngineLease:
    index: int       # engine slot in the router
    handle: Any      # the engine's Ray actor handle
    generation: int  # replacements of slot `index` so far (0 = the engine the run started with)


class RouterAPI(Protocol):
    async def acquire(self, request_id: str, exclude: int | None = None) -> EngineLease: ...

    def release(self, request_id: str) -> None: ...

    def report_dead(self, index: int, generation: int) -> None: ...


@dataclass(frozen=True)
class Routed:
    """Generation through a router actor (a Ray handle of a `RouterAPI` implementation)."""

    router: Any
