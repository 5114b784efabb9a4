"""Running episodes with a policy, and program-assisted synthesis with validation.

`run_episode` plays one seeded episode: the policy writes each model turn as text, the text is
parsed (`kpop.rollout.tool_parser.parse_action`) and stepped with `bounded_step`, so a step never
raises and never runs past the env's timeout; the episode also stops after `max_turns` turns.

`verified_examples` is the only way a reference solver's output becomes supervised data: the
solver's turns are executed in the environment, the environment's verifier scores the episode,
and only episodes that reach `min_reward` are kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from kpop.envs.contract import AgentEnv, Message, Task, bounded_step

Policy = Callable[[AgentEnv, Task, list[Message]], Awaitable[str]]


@dataclass
class EpisodeOutcome:
    task_id: str
    reward: float
    turns: int
    terminated: bool
    truncated: bool
    messages: list[Message] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    reward_parts: dict[str, float] = field(default_factory=dict)
    step_rewards: list[float] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


async def reference_policy(env: AgentEnv, task: Task, history: list[Message]) -> str:
    """The env's reference solver; an empty final answer once it has nothing more to say."""
    return env.reference_action() or ""


async def run_episode(env: AgentEnv, seed: int, policy: Policy, options: dict[str, Any] | None = None, max_turns: int | None = None) -> EpisodeOutcome:
    task = env.reset_task(seed, options)
    history = list(task.messages)
    out = EpisodeOutcome(task.task_id, 0.0, 0, False, False, tools=task.tools)
    limit = max_turns or env.max_turns
    for turn in range(1, limit + 1):
        from kpop.rollout.tool_parser import parse_action

        text = await policy(env, task, history)
        history.append(Message("assistant", text))
        result = await bounded_step(env, parse_action(text))
        history.extend(result.observations)
        out.turns, out.reward = turn, result.reward
        out.step_rewards.append(result.reward)
        out.reward_parts, out.details = dict(result.info.reward_parts), dict(result.info.details)
        if result.terminated or result.truncated:
            out.terminated, out.truncated = result.terminated, result.truncated
            break
    else:
        out.truncated = True
    out.messages = history
    return out


async def verified_examples(env: AgentEnv, seeds: Iterable[int], min_reward: float = 1.0, options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Supervised examples from the reference solver, kept only when the verifier accepts them."""
    kept = []
    for seed in seeds:
        outcome = await run_episode(env, seed, reference_policy, options)
        if outcome.terminated and outcome.reward >= min_reward:
            kept.append({"task_id": outcome.task_id, "seed": seed, "reward": outcome.reward, "tools": outcome.tools,
                         "messages": [{k: v for k, v in asdict(m).items() if v is not None} for m in outcome.messages]})
    return kept
