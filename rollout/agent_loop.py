"""The multi-turn agent loop: one episode of one environment, producing one Trajectory.

    prompt = chat template(task messages, tools)            (applied once)
    repeat up to max_turns:
        turn  = policy(context token ids)                   (generated ids, log-probs, versions)
        step  = await env.astep(parse(turn)) within timeout (tool calls run here, off the scheduler)
        stop if terminated / truncated / out of tokens
        context += turn + observation ids                   (ids appended, never re-tokenised)

The policy is anything that maps context ids to a GenerationResult: an engine (training rollouts,
evaluation) or a reference solver (cold-start data), so both produce records the same way.
Environment steps go through `bounded_step`: a timed-out or failing step (a tool, a reward or a
verifier that hangs past the step timeout or raises) never raises into the caller; it ends the
episode with finish_reason "env_error", `env_error` "timeout" or "exception" and the neutral reward
(0), and the metrics count it (`env_errors`, kpop.report.stats).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kpop.envs.contract import AgentEnv, Message, bounded_step
from kpop.envs.sandbox.api import count_executions
from kpop.rollout.chat import ChatFormat
from kpop.rollout.engine import GenerationResult
from kpop.rollout.tool_parser import parse_action
from kpop.trajectory import Timing, Trajectory, TrajectoryBuilder

Policy = Callable[[list[int], int], Awaitable[GenerationResult]]


@dataclass(frozen=True)
class LoopLimits:
    max_turns: int = 4
    max_total_tokens: int = 256
    max_new_tokens: int = 48
    step_timeout_s: float = 10.0


@dataclass(frozen=True)
class Episode:
    """One rollout to run: the task (environment + seed) and which sample of its group this is."""

    env_name: str
    seed: int
    group_id: str = ""
    sample: int = 0
    priority: int = 0  # of its generation requests: lower first (training tasks: the draw index)


async def run_episode(env: AgentEnv, episode: Episode, chat: ChatFormat, policy: Policy,
                      limits: LoopLimits, options: dict | None = None) -> Trajectory:
    t0 = time.perf_counter()
    gen_s = env_s = 0.0
    task = env.reset_task(episode.seed, options)
    traj = TrajectoryBuilder(task.task_id, episode.env_name, episode.group_id)
    traj.add_context(chat.prompt_ids(task.messages, task.tools))
    reward, parts, finish, turns, env_error = 0.0, {}, "max_turns", 0, ""
    with count_executions() as sandbox_runs:
        while turns < limits.max_turns:
            budget = min(limits.max_new_tokens, limits.max_total_tokens - len(traj))
            if budget <= 0:
                finish = "length"
                break
            t = time.perf_counter()
            turn = await policy(list(traj.token_ids), budget)
            gen_s += time.perf_counter() - t
            traj.add_generated(turn.token_ids, turn.logprobs, turn.versions)
            turns += 1
            t = time.perf_counter()
            outcome = await bounded_step(env, parse_action(chat.decode(turn.token_ids)), limits.step_timeout_s)
            env_s += time.perf_counter() - t
            reward, parts = outcome.reward, outcome.info.reward_parts
            if outcome.terminated or outcome.truncated:
                finish = "terminated" if outcome.terminated else "truncated"
                env_error = environment_failure(outcome)
                finish = "env_error" if env_error else finish
                break
            obs = chat.observation_ids(outcome.observations or [Message("user", "continue")])
            if len(traj) + len(obs) >= limits.max_total_tokens:
                finish = "length"
                break
            traj.add_context(obs)
    timing = Timing(generate_s=gen_s, env_s=env_s, total_s=time.perf_counter() - t0)
    return traj.build(reward, parts, turns, finish, timing, env_error, sandbox_runs[0])


def environment_failure(outcome) -> str:
    """"timeout" or "exception" when `bounded_step` ended the episode for the environment's failure
    (the contract: a truncation carrying `details["error"]`), else ""."""
    error = outcome.info.details.get("error") if outcome.truncated else None
    if not error:
        return ""
    return "timeout" if error == "timeout" else "exception"


def solver_policy(env: AgentEnv, chat: ChatFormat) -> Policy:
    """The environment's reference solver as a policy (log-prob 0, version 0): cold-start data."""

    async def act(context_ids: list[int], max_tokens: int) -> GenerationResult:
        text = env.reference_action()
        if text is None:
            raise ValueError(f"{type(env).__name__} has no reference solver")
        ids = chat.turn_ids(text)[:max_tokens]
        return GenerationResult("solver", ids, [0.0] * len(ids), [0] * len(ids), "stop")

    return act
