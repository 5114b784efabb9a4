"""The contract's guarantees: bounded steps, the turn cap, typed tool dispatch, gymnasium wrappers."""

from __future__ import annotations

import asyncio
import json

import pytest

from kpop.envs.contract import (
    Action,
    AgentEnv,
    Message,
    StepResult,
    Task,
    ToolCall,
    bounded_step,
)
from kpop.envs.registry import make_env
from kpop.envs.tools import Tool, ToolError, ToolTable, params


class _Stuck(AgentEnv):
    """Never answers on its own: sleeps, raises, or keeps the episode open, as told."""

    max_turns = 3

    def __init__(self, mode: str = "open") -> None:
        super().__init__()
        self.mode = mode

    def make_task(self, seed, options):
        return Task(f"stuck-{seed}", [Message("user", "hi")])

    async def astep(self, action):
        if self.mode == "sleep":
            await asyncio.sleep(10)
        if self.mode == "raise":
            raise RuntimeError("boom")
        return StepResult([Message("user", "go on")], 0.0, False, False)


async def test_bounded_step_turns_a_slow_step_into_a_truncation():
    env = _Stuck("sleep")
    env.reset_task(0)
    result = await bounded_step(env, Action("x"), timeout_s=0.05)
    assert result.truncated and result.info.details["error"] == "timeout"


async def test_bounded_step_turns_an_exception_into_a_truncation():
    env = _Stuck("raise")
    env.reset_task(0)
    result = await bounded_step(env, Action("x"))
    assert result.truncated and "RuntimeError: boom" in result.info.details["error"]


async def test_turn_cap_truncates_envs_that_do_not_count_turns():
    env = _Stuck("open")
    env.reset_task(0)
    ends = [(await bounded_step(env, Action("x"))).truncated for _ in range(3)]
    assert ends == [False, False, True]


def _table() -> ToolTable:
    def add(a: int, b: int) -> int:
        return a + b

    def fail(reason: str) -> str:
        raise ToolError(f"refused: {reason}")

    return ToolTable([Tool("add", "add", params(a={"type": "integer"}, b={"type": "integer"}), add),
                      Tool("fail", "fail", params(reason={"type": "string", "enum": ["x", "y"]}), fail)])


@pytest.mark.parametrize(("name", "args", "needle"), [
    ("nope", {}, "unknown tool"),
    ("add", {"a": 1}, "missing the required field 'b'"),
    ("add", {"a": "1", "b": 2}, "arguments.a must be of type integer"),
    ("add", {"a": True, "b": 2}, "must be of type integer"),
    ("add", {"a": 1, "b": 2, "c": 3}, "unknown field 'c'"),
    ("add", [1, 2], "must be a JSON object"),
    ("fail", {"reason": "z"}, "must be one of"),
    ("fail", {"reason": "x"}, "refused: x"),
    ("fail", {"reason": "x" * 10_000}, "more than the limit"),
])
async def test_tool_table_reports_bad_calls_as_errors(name, args, needle):
    out = await _table().call(name, args)
    assert out.startswith("error:") and needle in out


async def test_tool_table_runs_good_calls():
    assert await _table().call("add", {"a": 2, "b": 3}) == "5"


def test_gymnasium_wrappers_speak_json_text():
    env = make_env("tool_use")
    obs, info = env.reset(seed=3)
    messages = json.loads(obs)
    assert messages[0]["role"] == "system" and info["tools"] and info["task_id"] == "tool_use-3"
    obs, _reward, terminated, truncated, info = env.step('<tool_call>{"name": "get_order", "arguments": {"order_id": 7}}</tool_call>')
    assert "must be of type string" in json.loads(obs)[0]["content"] and not terminated and not truncated


async def test_step_before_reset_and_after_the_end_is_terminal_not_an_error():
    env = make_env("workflow")
    assert (await env.astep(Action("hello"))).terminated
    env.reset_task(0)
    assert (await env.astep(Action("Done."))).terminated
    again = await env.astep(Action("more", [ToolCall("list_files", {})]))
    assert again.terminated and again.reward == 0.0 and "over" in again.info.details["error"]
