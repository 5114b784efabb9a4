"""The `coding` family's difficulty and reference options, on generated problems: `templates`,
`fix_rate` and `num_tests` change the problems (and at their defaults leave every problem as it
was); on `reference_lookup_rate` of the tasks the reference submits a table of the hidden tests'
answers, which passes its own task's tests in the sandbox and fails another task's."""

from __future__ import annotations

import asyncio

import pytest

from kpop.envs.contract import Action, bounded_step
from kpop.envs.families.coding.generated import TEMPLATE_NAMES, lookup_solution, make_problem
from kpop.envs.registry import make_env
from kpop.envs.solver import reference_policy, run_episode

GENERATED = {"source": "generated"}


def _problems(options: dict, seeds) -> list:
    env = make_env("coding", {**GENERATED, **options})
    return [env.pick(s) for s in seeds]


def test_defaults_give_the_problems_as_before_and_the_options_change_them():
    assert _problems({}, range(40)) == [make_problem(s) for s in range(40)]
    assert _problems({"templates": list(TEMPLATE_NAMES), "fix_rate": 0.5, "num_tests": 12}, range(40)) == _problems({}, range(40))
    two = _problems({"templates": ["sum_multiples", "clamp_all"]}, range(60))
    assert {p.entry_point for p in two} == {"sum_multiples", "clamp_all"}
    assert {p.kind for p in _problems({"fix_rate": 0.0}, range(60))} == {"write"}
    fixes = [p.kind for p in _problems({"fix_rate": 1.0}, range(60))]
    assert fixes.count("fix") > 50   # every draw is posed as a fix where the bug fails a test
    few = _problems({"num_tests": 3}, range(20))
    assert {p.tests.count("assert candidate") for p in few} == {3} and {len(p.answers) for p in few} == {3}
    assert {p.tests.count("assert candidate") for p in _problems({}, range(20))} == {12}


def test_options_are_checked():
    for bad in ({"templates": ["quicksort"]}, {"templates": []}, {"fix_rate": 1.5}, {"num_tests": 0}, {"reference_lookup_rate": -0.1}):
        with pytest.raises(ValueError, match="options of environment 'coding'"):
            make_env("coding", bad)


@pytest.mark.parametrize("rate", [0.0, 0.7, 1.0])
def test_the_reference_submits_a_lookup_table_on_the_configured_share_and_still_passes(rate):
    options = {**GENERATED, "fix_rate": 0.0, "num_tests": 3, "reference_lookup_rate": rate}
    env = make_env("coding", options)
    plans = []
    for s in range(200):
        env.reset_task(s)
        plans.append("[repr(" in env.reference_action())
    assert sum(plans) / len(plans) == pytest.approx(rate, abs=0.07)
    assert _problems(options, range(200)) == _problems({"fix_rate": 0.0, "num_tests": 3}, range(200))   # the same tasks

    async def play():
        return [await run_episode(make_env("coding", options), s, reference_policy) for s in range(8)]
    assert {o.reward for o in asyncio.run(play())} == {1.0}   # verified in the sandbox, table or function


async def test_a_lookup_table_fails_on_another_task_of_its_template():
    env = make_env("coding", {**GENERATED, "templates": ["sum_multiples"], "fix_rate": 0.0, "num_tests": 3})
    env.reset_task(1)
    table = lookup_solution(env.problem)
    assert table.startswith("def sum_multiples(nums):\n    return {")
    result = await bounded_step(env, Action(f"```python\n{table}```"))
    assert result.reward == 1.0
    env.reset_task(2)
    result = await bounded_step(env, Action(f"```python\n{table}```"))
    assert result.reward == 0.0 and result.info.reward_parts["has_code"] == 1.0
