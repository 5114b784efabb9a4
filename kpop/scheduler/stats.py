"""Per-step scheduler metrics, written into the "rl" records of metrics.jsonl.

Keys (all per optimisation step unless noted):
    staleness_hist   list of trained-token counts indexed by version gap (current RL version minus
                     the version that generated the token); length max_staleness + 1, longer
                     only if a token violated the bound (never clipped into the last bucket)
    max_gap          largest gap of any trained token (<= max_staleness by construction)
    buffer_size      complete groups left in the buffer after the step took its batch
    in_flight        episodes running when the step fired
    paused           episodes in flight across this step's weight update (frozen by the engine's
                     pause "keep", resumed under the new version with their tokens kept)
    resumed          trained trajectories whose tokens span more than one version
    requeued         groups dropped as too stale and re-run (cumulative)
    engine_util      fraction of engine samples with requests in flight during the step
    env_latency_p50/p95/p99   environment seconds per trained episode (Timing.env_s)
    tokens_per_s     generated tokens trained this step / step wall seconds
    worker_restarts, engine_restarts, retried   fault counters (cumulative)
    migrated, moved  tail migration: aborts issued / turns that continued on another engine (cumulative)
    replayable_turns finished turns of paused episodes restored from the checkpoint (cumulative)
"""

from __future__ import annotations

from kpop.scheduler.buffer import Group


def staleness_hist(groups: list[Group], version: int, max_staleness: int) -> list[int]:
    gaps = [max(version - (v - g.base), 0) for g in groups for t in g.trajs.values()
            for v, m in zip(t.versions, t.loss_mask) if m]
    hist = [0] * (max([max_staleness, *gaps]) + 1)
    for gap in gaps:
        hist[gap] += 1
    return hist


def max_gap(groups: list[Group], version: int) -> int:
    return max((version - g.oldest_version() for g in groups if g.generated_tokens()), default=0)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def resumed_count(groups: list[Group]) -> int:
    return sum(len({v for v, m in zip(t.versions, t.loss_mask) if m}) > 1 for g in groups for t in g.trajs.values())
