"""Per-step statistics computed from a batch of Trajectories (see kpop.metrics for the schema).

Contract: `trajectory_stats(trajs, policy_version=None)` is a pure function returning a flat dict
of numbers (and one list, `staleness_hist`) whose keys are documented in kpop.metrics. An empty
batch gives an empty dict. Invariants:
- `sum(staleness_hist)` equals the number of generated tokens in the batch;
- every `pass_rate*` lies in [0, 1] and `episodes/<env>` sums to len(trajs);
- percentiles use linear interpolation between order statistics (numpy's default).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from kpop.trajectory import Trajectory

PASS_THRESHOLD = 0.99


def passed(traj: Trajectory, threshold: float = PASS_THRESHOLD) -> bool:
    """An episode passes when its task score (reward part "task", else the reward) reaches the threshold."""
    score = traj.reward_parts.get("task", traj.reward)
    return score >= threshold


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linearly interpolated; values must be non-empty."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def staleness_histogram(trajs: list[Trajectory], policy_version: int | None = None) -> list[int]:
    """Counts of generated tokens by version gap (policy_version - token version).

    `policy_version` defaults to the newest version among the batch's generated tokens (the
    synchronous loop's reference: every token is then at gap 0).
    """
    versions = [v for t in trajs for v, m in zip(t.versions, t.loss_mask) if m]
    if not versions:
        return []
    ref = max(versions) if policy_version is None else policy_version
    gaps = Counter(max(ref - v, 0) for v in versions)
    return [gaps.get(g, 0) for g in range(max(gaps) + 1)]


def trajectory_stats(trajs: list[Trajectory], policy_version: int | None = None) -> dict[str, Any]:
    if not trajs:
        return {}
    lengths = [float(t.num_generated) for t in trajs]
    env_step_s = [t.timing.env_s / max(t.num_turns, 1) for t in trajs]
    episode_s = [t.timing.total_s for t in trajs]
    out: dict[str, Any] = {
        "response_len_p50": percentile(lengths, 50),
        "response_len_max": max(lengths),
        "pass_rate": sum(passed(t) for t in trajs) / len(trajs),
        "env_latency_p50": percentile(env_step_s, 50),
        "env_latency_p95": percentile(env_step_s, 95),
        "env_latency_p99": percentile(env_step_s, 99),
        "episode_s_p50": percentile(episode_s, 50),
        "episode_s_max": max(episode_s),
    }
    by_env: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        by_env[t.env_id].append(t)
    for env in sorted(by_env):
        group = by_env[env]
        out[f"pass_rate/{env}"] = sum(passed(t) for t in group) / len(group)
        out[f"env_reward/{env}"] = sum(t.reward for t in group) / len(group)
        out[f"episodes/{env}"] = float(len(group))
    out["env_errors"] = float(sum(bool(t.env_error) for t in trajs))
    for t in trajs:
        if t.env_error:
            key = f"env_errors/{t.env_id}/{t.env_error}"
            out[key] = out.get(key, 0.0) + 1.0
    hist = staleness_histogram(trajs, policy_version)
    if hist:
        total = sum(hist)
        out["staleness_hist"] = hist
        out["staleness_mean"] = sum(g * c for g, c in enumerate(hist)) / total
        out["staleness_max"] = float(len(hist) - 1)
    return out
