"""`kpop envs check`: the four families pass the conformance suite, and the suite catches broken envs."""

from __future__ import annotations

import argparse
import json
import random

import pytest

from kpop.envs.conformance import run_conformance
from kpop.envs.contract import AgentEnv, Message, StepResult, Task
from kpop.envs.registry import _REGISTRY, register_env


@pytest.mark.parametrize("name", ["coding", "search", "tool_use", "workflow"])
def test_family_passes_every_check(name):
    results = run_conformance(name, seeds=2 if name != "coding" else 1)
    assert {r.name for r in results} >= {"gymnasium", "determinism", "reward_bounds", "reference_solver", "malformed_actions", "too_many_turns", "timeouts", "pickling"}
    assert [r for r in results if not r.passed] == []


class _Broken(AgentEnv):
    """Random tasks, out-of-range rewards, and it crashes on tool calls."""

    def make_task(self, seed, options):
        self.answer = random.random()
        return Task("broken", [Message("user", str(self.answer))])

    def reference_action(self):
        return "answer"

    async def astep(self, action):
        if action.tool_calls or action.parse_errors:
            raise ValueError("cannot handle tools")
        return StepResult([], 5.0, True, False)


@pytest.fixture
def broken_env():
    register_env("broken-test-env")(_Broken)
    yield "broken-test-env"
    _REGISTRY.pop("broken-test-env", None)


def test_conformance_reports_what_is_broken(broken_env):
    failed = {r.name for r in run_conformance(broken_env, seeds=2) if not r.passed}
    assert {"determinism", "reward_bounds", "malformed_actions"} <= failed


def test_cli_check_exit_code_and_json(broken_env, capsys):
    from kpop.cli import envs_cmd

    parser = argparse.ArgumentParser()
    envs_cmd.add_arguments(parser)
    assert envs_cmd.run(parser.parse_args(["check", broken_env, "--json", "--seeds", "1"])) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is False and any(c["name"] == "reward_bounds" and not c["passed"] for c in report["checks"])
    assert envs_cmd.run(parser.parse_args(["list", "--json"])) == 0
    listed = {e["name"]: e["source"] for e in json.loads(capsys.readouterr().out)["envs"]}
    assert listed[broken_env] == "builtin" and {"coding", "search", "tool_use", "workflow"} <= set(listed)
    assert envs_cmd.run(parser.parse_args(["check", "no-such-env"])) == 2
