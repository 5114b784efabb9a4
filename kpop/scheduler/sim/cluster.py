"""The engines as a cluster: placement, tail migration, and the turns of one episode.

Placement follows the router (kpop.scheduler.router, `acquire`): a generation request goes to the
engine with the fewest live requests (running or waiting), ties to the lowest index; a migrated
request skips the engine it left (`exclude`). The synchronous loop instead pins episode i of a
step to engine i mod E for all its turns (RunContext.rollout) and passes `engine`.

Tail migration asks the real policy, kpop.scheduler.tail.choose_migrations, about the live
requests of the busiest and the idlest engine, aged since their placement. The policy compares
exactly those two engines (most and fewest live requests, ties by index) and moves only requests
of the busiest, so handing it the other engines' requests would not change its answer; it keeps a
migration check O(load) instead of O(cluster). A moved request is aborted and placed again with
`exclude`, keeping its generated tokens and their versions; it resumes from its prefix, which
costs the new engine request_s again (decode.py).

An episode (`EpisodeRun`) is a plan of turns: turn k generates plan.tokens[k] tokens, then the
environment step waits plan.latency_s[k] seconds (an awaitable: no engine waits for it).
Invariant: each request is live on exactly one engine from placement to completion.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from kpop.scheduler.sim.clock import Clock
from kpop.scheduler.sim.decode import DecodeCurve
from kpop.scheduler.sim.engine import Request, SimEngine
from kpop.scheduler.sim.workload import EpisodePlan, SimTrajectory
from kpop.scheduler.tail import LiveRequest, choose_migrations


class LoadIndex:
    """Least- and most-loaded engine in O(log E): lazy heaps of (load, index) and (-load, index)."""

    def __init__(self, n: int) -> None:
        self.load = [0] * n
        self._rebuild()

    def _rebuild(self) -> None:
        self.low = [(load, i) for i, load in enumerate(self.load)]
        self.high = [(-load, i) for i, load in enumerate(self.load)]
        heapq.heapify(self.low)
        heapq.heapify(self.high)

    def update(self, i: int, load: int) -> None:
        if load == self.load[i]:
            return
        self.load[i] = load
        heapq.heappush(self.low, (load, i))
        heapq.heappush(self.high, (-load, i))
        if len(self.low) > 4 * len(self.load) + 64:
            self._rebuild()

    def _valid_top(self, heap: list[tuple[int, int]], sign: int) -> tuple[int, int]:
        while sign * heap[0][0] != self.load[heap[0][1]]:
            heapq.heappop(heap)
        return heap[0]

    def idlest(self, exclude: int | None = None) -> int:
        if len(self.load) == 1:
            return 0
        held = []
        while (top := self._valid_top(self.low, 1))[1] == exclude:
            held.append(heapq.heappop(self.low))
        for entry in held:
            heapq.heappush(self.low, entry)
        return top[1]

    def busiest(self) -> int:
        return self._valid_top(self.high, -1)[1]


class Cluster:
    def __init__(self, clock: Clock, engines: int, curve: DecodeCurve, max_seqs: int) -> None:
        self.clock = clock
        self.loads = LoadIndex(engines)
        self.engines = [SimEngine(i, curve, max_seqs, clock, self.loads.update) for i in range(engines)]
        self.ids = itertools.count()
        self.migrated = self.moved = 0

    def generate(self, tokens: int, priority: int, on_done: Callable[[Request], None],
                 engine: int | None = None) -> None:
        self._place(Request(next(self.ids), priority, float(tokens), on_done), engine)

    def _place(self, req: Request, engine: int | None = None, exclude: int | None = None) -> None:
        req.placed_at = self.clock.now
        self.engines[self.loads.idlest(exclude) if engine is None else engine].add(req)

    def migrate_tail(self, min_age_s: float, max_moves: int) -> int:
        if len(self.engines) < 2:
            return 0
        pair = [self.loads.busiest(), self.loads.idlest()]
        now = self.clock.now
        reqs = {str(r.seq): r for i in dict.fromkeys(pair) for r in self.engines[i].live()}
        live = [LiveRequest(rid, r.engine, now - r.placed_at) for rid, r in reqs.items()]
        moves = choose_migrations(live, pair, min_age_s, max_moves)
        for move in moves:
            req = reqs[move.request_id]
            self.engines[move.engine].abort(req)
            self._place(req, exclude=move.engine)
            self.moved += req.engine != move.engine
        self.migrated += len(moves)
        return len(moves)

    def pause(self) -> None:
        for e in self.engines:
            e.pause()

    def publish(self, version: int) -> None:
        """After a pause: every engine samples with `version` from now on, and resumes."""
        for e in self.engines:
            e.set_version(version)
            e.resume()

    def idle_fraction(self, wall_s: float) -> float:
        busy = sum(e.busy_until(self.clock.now) for e in self.engines)
        return 1.0 - busy / (wall_s * len(self.engines)) if wall_s > 0 else 0.0


class EpisodeRun:
    """One episode: its turns in order, each a generation request then an environment step."""

    def __init__(self, cluster: Cluster, plan: EpisodePlan, priority: int,
                 on_done: Callable[[SimTrajectory], None], engine: int | None = None) -> None:
        self.cluster, self.plan, self.priority, self.on_done, self.engine = cluster, plan, priority, on_done, engine
        self.versions: dict[int, float] = {}
        self.turn = 0
        self._generate()

    def _generate(self) -> None:
        self.cluster.generate(self.plan.tokens[self.turn], self.priority, self._generated, self.engine)

    def _generated(self, req: Request) -> None:
        for version, n in req.versions.items():
            self.versions[version] = self.versions.get(version, 0.0) + n
        self.cluster.clock.after(self.plan.latency_s[self.turn], self._stepped)

    def _stepped(self) -> None:
        self.turn += 1
        if self.turn < len(self.plan.tokens):
            self._generate()
        else:
            oldest = min(v for v, n in self.versions.items() if n > 0)
            self.on_done(SimTrajectory(self.versions, sum(self.plan.tokens), self.plan.reward, self.turn, oldest))
