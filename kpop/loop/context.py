"""The handles a loop works with, and the few operations every loop needs on them.

`runtime` is the run's runtime configuration (kpop.runtime), derived from the spec and the model
folder the actors were started from: the loops take sampling parameters, reward terms and the
configuration of replacement actors from it, never from a second reading of the spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from kpop.metrics import PASS_THRESHOLD, MetricsWriter, trajectory_stats
from kpop.rollout.agent_loop import Episode
from kpop.rollout.engine import SamplingParams
from kpop.runtime import RunRuntime, runtime_config
from kpop.spec import RunSpec
from kpop.stages.measures import correct_tokens, mean_rubric
from kpop.tasks import TaskSampler
from kpop.trajectory import Trajectory


@dataclass
class RunContext:
    spec: RunSpec
    run_dir: Path
    model_dir: Path
    engines: list[Any]       # EngineActor handles
    workers: list[Any]       # EnvWorker handles
    learner: Any             # LearnerActor handle
    sampler: TaskSampler
    metrics: MetricsWriter
    # Engine start() refs still running: the cold start needs only workers and the learner, so it
    # overlaps engine start-up; the first use of an engine waits here.
    engine_start: list[Any] = field(default_factory=list)
    runtime: RunRuntime = field(init=False)

    def __post_init__(self) -> None:
        self.runtime = runtime_config(self.spec, self.model_dir)

    def wait_engines(self, timeout_s: float = 1800.0) -> None:
        starting, self.engine_start = self.engine_start, []
        if starting:
            ray.get(starting, timeout=timeout_s)

    def rollout(self, episodes: list[Episode], sampling: SamplingParams) -> list[Trajectory]:
        """Run episodes across workers and engines (round robin); results in input order."""
        self.wait_engines()
        refs = [
            self.workers[i % len(self.workers)].rollout.remote(ep, self.engines[i % len(self.engines)], sampling)
            for i, ep in enumerate(episodes)
        ]
        return ray.get(refs)

    def solve(self, episodes: list[Episode], overrides: dict[str, dict] | None = None,
              chunk: int = 1024) -> list[Trajectory]:
        """Reference-solver episodes, submitted in chunks (Ray warns past 5000 queued calls per actor);
        `overrides`: option overrides per environment name (RunSpec sft.anneal.env_options)."""
        overrides = overrides or {}
        out: list[Trajectory] = []
        for start in range(0, len(episodes), chunk):
            part = episodes[start:start + chunk]
            out += ray.get([self.workers[i % len(self.workers)].solve.remote(ep, overrides.get(ep.env_name))
                            for i, ep in enumerate(part)])
        return out

    def publish_weights(self, timeout_s: float = 120.0) -> int:
        """Push the learner's current weights to every engine; returns the new version."""
        self.wait_engines()
        update = ray.get(self.learner.publish.remote(), timeout=timeout_s)
        ray.get([e.update_weights.remote(update) for e in self.engines], timeout=timeout_s)
        return update.version

    def evaluate(self, episodes: list[Episode]) -> dict[str, float]:
        """Held-out rewards: greedy (`reward`, with the other summary stats) and one sample per task
        from the training distribution (`sampled_reward`: what the policy itself earns); where
        measured, tokens per passing greedy response and the rubric score greedy and sampled."""
        greedy = self.rollout(episodes, self.runtime.greedy)
        out = summarize(greedy)
        sampled = self.rollout(episodes, self.runtime.sampling)
        out["sampled_reward"] = sum(t.reward for t in sampled) / max(len(sampled), 1)
        weights = self.spec.learner.preference.rubric_weights
        figures = {"correct_tokens": correct_tokens(greedy, PASS_THRESHOLD), "rubric": mean_rubric(greedy, weights),
                   "sampled_rubric": mean_rubric(sampled, weights)}
        for env in sorted({t.env_id for t in greedy}):
            # per family: a mixed mean moves with which families' responses pass, not only with their length
            figures[f"correct_tokens/{env}"] = correct_tokens([t for t in greedy if t.env_id == env], PASS_THRESHOLD)
        return out | {k: v for k, v in figures.items() if v is not None}


def summarize(trajs: list[Trajectory], policy_version: int | None = None) -> dict[str, float]:
    n = max(len(trajs), 1)
    out = {
        "reward": sum(t.reward for t in trajs) / n,
        "gen_tokens": sum(t.num_generated for t in trajs) / n,
        "turns": sum(t.num_turns for t in trajs) / n,
        "episodes": float(len(trajs)),
        "sandbox_runs": float(sum(t.sandbox_runs for t in trajs)),
    }
    parts = sorted({k for t in trajs for k in t.reward_parts})
    for k in parts:
        out[f"reward/{k}"] = sum(t.reward_parts.get(k, 0.0) for t in trajs) / n
    out.update(trajectory_stats(trajs, policy_version))
    return out
