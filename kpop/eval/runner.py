"""Evaluate a checkpoint on held-out tasks through the same engine and agent loop as a run.

    tasks     the run's held-out tasks (kpop.eval.tasks), `tasks` of them
    greedy    one episode per task at temperature 0: the run's own held-out measurement
    sampled   `samples` episodes per task at `temperature` (per-sample seeds, as in training)
    score     greedy reward and pass rate; pass@1 and pass@k (unbiased estimator, kpop.eval.passk)

Contract: settings the checkpoint's run used (environment options and reward terms, agent-loop
limits, sampling, engine settings, sandbox, run seed) come from the run's spec.json when it is found
(kpop.runtime.recorded), and the engine and environment worker are configured from it by the same
conversion a run uses (kpop.runtime.build), so a greedy evaluation of the run's held-out tasks
repeats the run's own "after_rl" evaluation. An environment the run did not train on runs with its
spec defaults. The engine (the run's `rollout.engine`: vLLM or the built-in engine, in this process) and the environment worker (in this process, no
Ray) are the classes a run uses. The engine is always shut down, also on errors.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from kpop.eval.passk import mean_pass_at_k
from kpop.eval.tasks import held_out_tasks
from kpop.report.stats import PASS_THRESHOLD, passed
from kpop.rollout.agent_loop import Episode
from kpop.runtime.recorded import recorded_spec
from kpop.spec import RunSpec
from kpop.spec.envs import EnvEntrySpec
from kpop.trajectory import Trajectory


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: str
    envs: list[str] = field(default_factory=list)   # empty: the run's environments
    tasks: int = 32
    k: int = 4
    samples: int | None = None                      # samples per task (n >= k); default k
    temperature: float = 1.0
    seed: int | None = None                         # default: the run's seed
    threshold: float = PASS_THRESHOLD


@dataclass(frozen=True)
class EnvEval:
    env: str                     # environment name, or "all"
    tasks: int
    greedy_reward: float         # mean reward at temperature 0 (what a run logs as held-out reward)
    greedy_pass: float           # fraction of tasks passed at temperature 0
    greedy_gen_tokens: float     # mean generated tokens per greedy episode (the run logs it as gen_tokens)
    sampled_reward: float        # mean reward over all sampled episodes
    pass_at: dict[int, float]    # {1: pass@1, k: pass@k} over sampled episodes
    greedy_reward_parts: dict[str, float] = field(default_factory=dict)  # mean of each reward part, greedy


@dataclass(frozen=True)
class EvalResult:
    checkpoint: str
    samples: int
    k: int
    temperature: float
    seed: int
    rows: list[EnvEval]
    run_spec_found: bool

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for row in data["rows"]:
            row["pass_at"] = {f"pass@{k}": v for k, v in row["pass_at"].items()}
        return data


def score(env: str, greedy: list[Trajectory], sampled: list[list[Trajectory]], k: int,
          threshold: float = PASS_THRESHOLD) -> EnvEval:
    """One table row from per-task greedy episodes and per-task lists of sampled episodes."""
    n = max(len(greedy), 1)
    counts = [(len(s), sum(passed(t, threshold) for t in s)) for s in sampled]
    flat = [t for s in sampled for t in s]
    pass_at = {j: mean_pass_at_k(counts, j) for j in sorted({1, k})}
    return EnvEval(env, len(greedy), sum(t.reward for t in greedy) / n,
                   sum(passed(t, threshold) for t in greedy) / n, sum(t.num_generated for t in greedy) / n,
                   sum(t.reward for t in flat) / max(len(flat), 1), pass_at,
                   {p: sum(t.reward_parts.get(p, 0.0) for t in greedy) / n
                    for p in sorted({p for t in greedy for p in t.reward_parts})})


def run_eval(cfg: EvalConfig) -> EvalResult:
    if cfg.k < 1 or (cfg.samples or cfg.k) < cfg.k:
        raise ValueError(f"need 1 <= k <= samples (k={cfg.k}, samples={cfg.samples})")
    spec, found = recorded_spec(cfg.checkpoint)
    seed = spec.seed if cfg.seed is None else cfg.seed
    names = cfg.envs or [e.name for e in spec.envs]
    episodes = held_out_tasks(spec.envs, seed, names, cfg.tasks)
    if not episodes:
        raise ValueError(f"no held-out tasks for environments {names}")
    trained = {e.name for e in spec.envs}
    # The run's settings with the evaluation's seed, and every evaluated environment configured.
    spec = spec.model_copy(update={"seed": seed, "envs": [*spec.envs, *(EnvEntrySpec(name=n) for n in names if n not in trained)]})
    greedy, sampled = asyncio.run(_rollouts(cfg, spec, episodes))
    rows = []
    for env in [*sorted({ep.env_name for ep in episodes}), "all"]:
        idx = [i for i, ep in enumerate(episodes) if env in ("all", ep.env_name)]
        rows.append(score(env, [greedy[i] for i in idx], [sampled[i] for i in idx], cfg.k, cfg.threshold))
    return EvalResult(str(cfg.checkpoint), cfg.samples or cfg.k, cfg.k, cfg.temperature, seed, rows, found)


async def _rollouts(cfg: EvalConfig, spec: RunSpec,
                    episodes: list[Episode]) -> tuple[list[Trajectory], list[list[Trajectory]]]:
    from kpop.rollout.engine_choice import engine_from_config
    from kpop.rollout.env_worker import EnvWorker
    from kpop.runtime import runtime_config

    model_dir = str(Path(cfg.checkpoint).resolve())
    runtime = runtime_config(spec, model_dir)
    worker = EnvWorker(runtime.workers[0])
    engine = engine_from_config(runtime.engines[0].config)
    try:
        greedy = await asyncio.gather(*(worker.rollout(ep, engine, runtime.greedy) for ep in episodes))
        sampling = replace(runtime.sampling, temperature=cfg.temperature)
        n = cfg.samples or cfg.k
        flat = await asyncio.gather(*(
            worker.rollout(Episode(ep.env_name, ep.seed, f"{ep.group_id}:eval", sample=j), engine, sampling)
            for ep in episodes for j in range(n)))
    finally:
        closed = engine.close()
        if inspect.isawaitable(closed):  # the built-in engine closes asynchronously
            await closed
    return list(greedy), [list(flat[i * n:(i + 1) * n]) for i in range(len(episodes))]
