"""The calculator family's reference solver: `reference_tool_rate` decides, per task and
reproducibly, whether it calls the tool or answers from memory; both verify correct, so cold-start
data made from it teaches the policy to skip the tool on that share of tasks."""

from __future__ import annotations

import asyncio

import pytest

from kpop.envs.registry import make_env
from kpop.envs.solver import reference_policy, run_episode, verified_examples


def _episodes(rate: float, seeds, option: str = "reference_tool_rate"):
    async def play():
        return [await run_episode(make_env("calculator", {option: rate}), s, reference_policy) for s in seeds]
    return asyncio.run(play())


@pytest.mark.parametrize("rate", [0.0, 0.4, 1.0])
def test_the_reference_solver_calls_the_tool_on_the_configured_share_of_tasks(rate):
    outs = _episodes(rate, range(400))
    assert all(o.reward == 1.0 for o in outs)                      # both routes are correct
    used = [o.reward_parts["used_tool"] for o in outs]
    assert [o.turns for o in outs] == [2 if u else 1 for u in used]
    assert sum(used) / len(used) == pytest.approx(rate, abs=0.06)


def test_the_choice_is_a_property_of_the_task_and_leaves_the_task_unchanged():
    a, b, full = _episodes(0.4, range(50)), _episodes(0.4, range(50)), _episodes(1.0, range(50))
    assert [o.reward_parts["used_tool"] for o in a] == [o.reward_parts["used_tool"] for o in b]
    assert [o.messages[:2] for o in a] == [o.messages[:2] for o in full]   # same questions


def test_skipped_tool_episodes_are_kept_as_verified_cold_start_data():
    env = make_env("calculator", {"reference_tool_rate": 0.4})
    kept = asyncio.run(verified_examples(env, range(40)))
    roles = [[m["role"] for m in ex["messages"]] for ex in kept]
    assert len(kept) == 40
    assert ["system", "user", "assistant"] in roles and ["system", "user", "assistant", "tool", "assistant"] in roles


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_the_reference_rechecks_after_its_answer_on_the_configured_share_and_still_scores_one(rate):
    outs = _episodes(rate, range(200), "reference_recheck_rate")
    finals = [o.messages[-1]["content"] if isinstance(o.messages[-1], dict) else o.messages[-1].content for o in outs]
    checks = [f for f in finals if "\nCheck: " in f]
    assert all(o.reward == 1.0 for o in outs)                      # the grade reads the first answer only
    assert len(checks) / len(outs) == pytest.approx(rate, abs=0.08)
    for f in checks:
        answer, check = f.split("\n")
        assert check.endswith(" = " + answer.removeprefix("Answer: "))
    plain = _episodes(1.0, range(200))
    assert [o.messages[:3] for o in outs] == [o.messages[:3] for o in plain]   # same questions and tool calls
