"""Tail handling: which in-flight requests to move from a congested engine to an idle one.

A step finishes when its slowest request does; with several engine replicas, the longest-running
requests often sit on the busiest replica while another is idle. The policy (ARouter's idea,
minimising step completion time rather than request latency):

    busiest, idlest = alive engines with the most and the fewest live requests
    if load(busiest) - load(idlest) >= 2:
        move the oldest requests of `busiest` (running at least min_age_s), at most
        min(max_moves, (load(busiest) - load(idlest)) // 2) of them

Moving = abort on the congested engine, then the worker resumes the request from its prefix
(prompt + tokens generated so far, each keeping its version) on the least-loaded engine.
Pure function of its inputs, so it is tested on hand-made loads.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LiveRequest:
    request_id: str
    engine: int
    age_s: float


def choose_migrations(live: list[LiveRequest], alive: list[int], min_age_s: float, max_moves: int) -> list[LiveRequest]:
    if len(alive) < 2 or max_moves <= 0:
        return []
    load = {i: 0 for i in alive}
    for r in live:
        if r.engine in load:
            load[r.engine] += 1
    busiest = max(alive, key=lambda i: (load[i], -i))
    idlest = min(alive, key=lambda i: (load[i], i))
    gap = load[busiest] - load[idlest]
    if gap < 2:
        return []
    oldest = sorted((r for r in live if r.engine == busiest and r.age_s >= min_age_s), key=lambda r: -r.age_s)
    return oldest[: min(max_moves, gap // 2)]
