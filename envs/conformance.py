"""The conformance suite behind `kpop envs check NAME`: runs on any registered environment.

Checks (each a CheckResult; the suite never raises for what the environment does):
- gymnasium: gymnasium's own env checker on the gymnasium `reset`/`step` wrappers;
- determinism: the same seed gives the same task on fresh instances, and the same reference reward;
- reward_bounds: every step reward of reference and random episodes lies in `reward_range`;
- reference_solver: where the env has a solver, it reaches the top of the reward range (>= 99%);
- malformed_actions: bad JSON, unknown tools, wrong argument types, missing and huge arguments,
  non-object arguments, unclosed tags, empty and binary text give a StepResult (an error
  observation or an episode end) from `astep` itself, never an exception;
- too_many_turns: tool calls that never answer end in a truncation within `max_turns` steps;
- timeouts: a step bounded by a zero timeout comes back as a truncation and leaves the env usable,
  and a non-terminating submission (an infinite loop as code) returns within `step_timeout_s`;
- pickling: the env pickles before reset and mid-episode, and the copy continues exactly as the original;
- declarations: the reference solver's final step reports every part of `reward_parts`; where
  `answer_pattern` is set, the reference's final turn matches it, and text appended after the
  answer (a re-check with another answer) leaves the reward unchanged.
Run it outside an event loop (it drives its own with asyncio.run).
"""

from __future__ import annotations

import asyncio
import json
import pickle
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from kpop.envs.contract import AgentEnv, StepResult, bounded_step
from kpop.envs.random_policy import RandomPolicy
from kpop.envs.registry import make_env
from kpop.envs.solver import reference_policy, run_episode


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str = ""


def _parse(text: str):
    from kpop.rollout.tool_parser import parse_action

    return parse_action(text)


def _call(name: str, arguments: Any) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def malformed_actions(tools: list[dict[str, Any]]) -> dict[str, str]:
    """Named malformed turns for a task with these tool schemas."""
    cases = {
        "bad_json": '<tool_call>{"name": "x", "arguments": {</tool_call>',
        "unclosed_tag": '<tool_call>{"name": "x", "arguments": {}}',
        "unknown_tool": _call("no_such_tool_xyz", {}),
        "not_an_object": "<tool_call>[1, 2, 3]</tool_call>",
        "huge_call": _call("no_such_tool_xyz", {"x": "a" * 100_000}),
        "binary_text": "\x00\xff\ufffd<tool_call>\x00</tool_call>",
        "deep_nesting": "<tool_call>" + "[" * 5000 + "]" * 5000 + "</tool_call>",
    }
    for tool in tools[:8]:
        fn = tool["function"]
        props = fn.get("parameters", {}).get("properties", {})
        wrong = {k: ({"oops": [1]} if v.get("type") != "object" else "text") for k, v in props.items()}
        cases[f"wrong_types:{fn['name']}"] = _call(fn["name"], wrong)
        cases[f"string_arguments:{fn['name']}"] = _call(fn["name"], "not json")
        cases[f"huge_arguments:{fn['name']}"] = _call(fn["name"], {k: "x" * 20_000 for k in props})
        if fn.get("parameters", {}).get("required"):
            cases[f"missing_arguments:{fn['name']}"] = _call(fn["name"], {})
    return cases


async def _check_malformed(factory: Callable[[], AgentEnv], seed: int) -> CheckResult:
    env = factory()
    task = env.reset_task(seed)
    failures = []
    for label, text in malformed_actions(task.tools).items():
        env.reset_task(seed)
        try:
            result = await asyncio.wait_for(env.astep(_parse(text)), timeout=env.step_timeout_s)
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            failures.append(f"{label}: raised {type(exc).__name__}: {exc}"[:200])
            continue
        if not isinstance(result, StepResult):
            failures.append(f"{label}: returned {type(result).__name__}")
        elif not (result.terminated or result.truncated or any("error" in m.content.lower() for m in result.observations)):
            failures.append(f"{label}: neither an error observation nor an episode end")
    return CheckResult("malformed_actions", not failures, "; ".join(failures[:5]) or f"{len(malformed_actions(task.tools))} malformed turns handled")


async def _check_turn_limit(factory: Callable[[], AgentEnv], seed: int) -> CheckResult:
    env = factory()
    task = env.reset_task(seed)
    name = task.tools[0]["function"]["name"] if task.tools else "no_such_tool_xyz"
    for step in range(1, env.max_turns + 1):
        result = await bounded_step(env, _parse(_call(name, {"unexpected_argument": 1})))
        if result.terminated or result.truncated:
            return CheckResult("too_many_turns", True, f"episode ended after {step} tool-call turns (max_turns {env.max_turns})")
    return CheckResult("too_many_turns", False, f"still running after max_turns={env.max_turns} tool-call turns")


async def _check_timeouts(factory: Callable[[], AgentEnv], seed: int, expected: float) -> CheckResult:
    env = factory()
    env.reset_task(seed)
    first = env.reference_action() or "final answer"
    cut = await bounded_step(env, _parse(first), timeout_s=0)
    if not cut.truncated:
        return CheckResult("timeouts", False, "a step bounded by a zero timeout did not come back truncated")
    again = await run_episode(env, seed, reference_policy)
    if again.reward != expected:
        return CheckResult("timeouts", False, f"after a cancelled step the reference scored {again.reward}, before {expected}")
    env.reset_task(seed)
    start = time.perf_counter()
    slow = "```python\nwhile True:\n    pass\n```"
    result = await bounded_step(env, _parse(slow))
    elapsed = time.perf_counter() - start
    ok = isinstance(result, StepResult) and elapsed <= env.step_timeout_s + 5
    return CheckResult("timeouts", ok, f"cancelled step truncated, env usable after; a non-terminating submission returned in {elapsed:.1f} s (limit {env.step_timeout_s:g} s)")


async def _check_pickling(factory: Callable[[], AgentEnv], seed: int) -> CheckResult:
    env = factory()
    pickle.loads(pickle.dumps(env))
    env.reset_task(seed)
    first = env.reference_action() or "final answer"
    await bounded_step(env, _parse(first))
    copy = pickle.loads(pickle.dumps(env))
    action = env.reference_action() or "final answer"
    a, b = await bounded_step(env, _parse(action)), await bounded_step(copy, _parse(action))
    same = (a.reward, a.terminated, a.truncated, [m.content for m in a.observations]) == (b.reward, b.terminated, b.truncated, [m.content for m in b.observations])
    return CheckResult("pickling", same, "mid-episode copy continues identically" if same else f"copy diverged: {a.reward} vs {b.reward}")


def _check_gymnasium(factory: Callable[[], AgentEnv]) -> CheckResult:
    from gymnasium.utils.env_checker import check_env

    env = factory()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            check_env(env, skip_render_check=True)
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            return CheckResult("gymnasium", False, f"{type(exc).__name__}: {exc}"[:300])
    notes = sorted({str(w.message)[:100] for w in caught})
    return CheckResult("gymnasium", True, "passed" + (f" ({len(notes)} warnings: {notes[0]})" if notes else ""))


async def _episodes(factory: Callable[[], AgentEnv], seeds: list[int]) -> list[CheckResult]:
    tasks = [(asdict(factory().reset_task(s)), asdict(factory().reset_task(s))) for s in seeds]
    same_task = all(a == b for a, b in tasks)
    ref = [await run_episode(factory(), s, reference_policy) for s in seeds]
    ref2 = [await run_episode(factory(), s, reference_policy) for s in seeds]
    rnd = [await run_episode(factory(), s, RandomPolicy(s)) for s in seeds]
    same_reward = [o.reward for o in ref] == [o.reward for o in ref2]
    low, high = factory().reward_range
    rewards = [r for o in ref + rnd for r in o.step_rewards]
    bad = [r for r in rewards if not low <= r <= high]
    has_solver = _has_solver(factory, seeds[0])
    mean_ref = sum(o.reward for o in ref) / len(ref)
    return [
        CheckResult("determinism", same_task and same_reward, f"same task per seed: {same_task}; same reference reward: {same_reward}"),
        CheckResult("reward_bounds", not bad, f"{len(rewards)} step rewards within [{low}, {high}]" if not bad else f"out of range: {bad[:5]}"),
        CheckResult("reference_solver", (mean_ref >= 0.99 * high) if has_solver else True,
                    f"reference mean reward {mean_ref:.3f}, random {sum(o.reward for o in rnd) / len(rnd):.3f}" if has_solver else "no reference solver"),
    ]


RECHECK = "\nLet me check that again. Answer: 123456789"


async def _check_declarations(factory: Callable[[], AgentEnv], seed: int) -> CheckResult:
    env = factory()
    parts, pattern = type(env).reward_parts, type(env).answer_pattern
    if not _has_solver(factory, seed):
        return CheckResult("declarations", True, "no reference solver to check them against")
    ref = await run_episode(factory(), seed, reference_policy)
    missing = [p for p in parts if p not in ref.reward_parts]
    if missing:
        return CheckResult("declarations", False, f"reward_parts {missing} missing from the reference's final step")
    if pattern is None:
        return CheckResult("declarations", True, f"reward_parts {list(parts)} reported; no answer_pattern")
    turns = [m.content for m in ref.messages if m.role == "assistant"]
    if not re.search(pattern, turns[-1]):
        return CheckResult("declarations", False, f"answer_pattern {pattern!r} does not match the reference's final turn")

    async def replay(env: AgentEnv, task, history) -> str:
        done = sum(m.role == "assistant" for m in history)
        return turns[done] + (RECHECK if done == len(turns) - 1 else "")

    again = await run_episode(factory(), seed, replay)
    same = again.reward == ref.reward
    return CheckResult("declarations", same, f"text after the answer {'leaves' if same else 'changes'} the reward "
                       f"({ref.reward} -> {again.reward})")


def _has_solver(factory: Callable[[], AgentEnv], seed: int) -> bool:
    env = factory()
    env.reset_task(seed)
    return env.reference_action() is not None


def run_conformance(name: str, options: dict[str, Any] | None = None, seeds: int = 3) -> list[CheckResult]:
    def factory() -> AgentEnv:
        return make_env(name, options)

    seed_list = list(range(seeds))
    results = [_check_gymnasium(factory)]

    async def rest() -> list[CheckResult]:
        try:
            out = await _episodes(factory, seed_list)
            expected = (await run_episode(factory(), 0, reference_policy)).reward
        except Exception as exc:  # noqa: BLE001 - reset or the episode runner itself broke: nothing else can run
            return [CheckResult("episodes", False, f"crashed: {type(exc).__name__}: {exc}"[:300])]
        for check in (_check_malformed(factory, 0), _check_turn_limit(factory, 0), _check_timeouts(factory, 0, expected), _check_pickling(factory, 0),
                      _check_declarations(factory, 0)):
            try:
                out.append(await check)
            except Exception as exc:  # noqa: BLE001 - a check that crashes is a failed check, reported like the others
                out.append(CheckResult(check.__name__.removeprefix("_check_"), False, f"crashed: {type(exc).__name__}: {exc}"[:300]))
        return out

    return results + asyncio.run(rest())
