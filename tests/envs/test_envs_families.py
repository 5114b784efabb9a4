"""The four families: reference solvers earn the reward, random play does not, malformed turns
become error observations, and each verifier rejects wrong work."""

from __future__ import annotations

import asyncio

import pytest

from kpop.envs.conformance import malformed_actions
from kpop.envs.contract import Action, bounded_step
from kpop.envs.random_policy import RandomPolicy
from kpop.envs.registry import make_env
from kpop.envs.solver import reference_policy, run_episode, verified_examples
from kpop.rollout.tool_parser import parse_action

FAMILIES = ["coding", "search", "tool_use", "workflow"]


async def _play(name: str, seeds, policy_factory):
    outs = await asyncio.gather(*(run_episode(make_env(name), s, policy_factory(s)) for s in seeds))
    return [o.reward for o in outs]


@pytest.mark.parametrize("name", FAMILIES)
async def test_reference_solver_solves_and_random_policy_does_not(name):
    seeds = range(8)
    assert await _play(name, seeds, lambda s: reference_policy) == [1.0] * 8
    assert sum(await _play(name, seeds, RandomPolicy)) / 8 < 0.05


@pytest.mark.parametrize("name", FAMILIES)
async def test_malformed_actions_become_error_observations(name):
    env = make_env(name)
    task = env.reset_task(1)
    for label, text in malformed_actions(task.tools).items():
        env.reset_task(1)
        result = await env.astep(parse_action(text))
        assert not result.terminated, label
        assert any(m.content.startswith("error:") for m in result.observations), label


@pytest.mark.parametrize("name", FAMILIES)
async def test_too_many_turns_truncate_with_zero_reward(name):
    env = make_env(name)
    env.reset_task(2)
    results = [await bounded_step(env, parse_action('<tool_call>{"name": "nope", "arguments": {}}</tool_call>')) for _ in range(env.max_turns)]
    assert [r.truncated for r in results] == [False] * (env.max_turns - 1) + [True]
    assert results[-1].reward == 0.0


async def test_verified_examples_keep_only_episodes_the_verifier_accepts():
    env = make_env("tool_use")
    kept = await verified_examples(env, range(3))
    assert [k["seed"] for k in kept] == [0, 1, 2] and kept[0]["messages"][-1]["role"] == "assistant"
    strict = await verified_examples(env, range(3), min_reward=1.01)
    assert strict == []


async def test_search_rewards_f1_and_em_against_the_gold_answer():
    env = make_env("search")
    env.reset_task(5)
    gold = env.episode.facts["answer"]
    assert (await env.astep(Action(f"I looked it up. Answer: {gold}"))).info.reward_parts == {"task": 1.0, "em": 1.0, "f1": 1.0}
    env.reset_task(5)
    partial = await env.astep(Action(f"Answer: {gold} or somewhere else"))
    assert partial.info.reward_parts["em"] == 0.0 and 0.0 < partial.reward < 1.0
    em_env = make_env("search", {"metric": "em"})
    em_env.reset_task(5)
    assert (await em_env.astep(Action(f"Answer: {gold} or somewhere else"))).reward == 0.0


async def test_search_tools_run_over_the_bm25_index():
    env = make_env("search")
    env.reset_task(7)
    hop = env.episode.facts["hops"][0]
    hits = await env.table.call("search", {"query": env.index.open(hop).title})
    assert hop in hits
    assert "no document matches" in await env.table.call("search", {"query": "the of and"})
    assert "no document with doc_id" in await env.table.call("open", {"doc_id": "person/nobody"})


async def test_tool_use_state_must_match_and_policies_hold():
    env = make_env("tool_use")
    env.reset_task(0)
    assert "find_customer first" in await env.table.call("get_order", {"order_id": "O1"})
    # answering without acting leaves the state unchanged, so only refusal/status tasks could pass, and they need the answer
    for seed in range(10):
        env.reset_task(seed)
        result = await env.astep(Action("Sorry, I cannot help."))
        assert result.reward == 0.0, env.episode.facts["kind"]


async def test_tool_use_extra_calls_cost_agreement_but_not_correctness():
    env = make_env("tool_use")
    env.reset_task(0)
    await env.astep(parse_action('<tool_call>{"name": "get_policy", "arguments": {"topic": "cancel"}}</tool_call>'))
    while (text := env.episode.plan[len(env.view.texts) - 1]) is not None:
        result = await env.astep(parse_action(text))
        if result.terminated:
            break
    assert result.info.reward_parts["state"] == 1.0 and 0.75 < result.reward < 1.0


async def test_workflow_sql_cannot_attach_or_run_forever():
    env = make_env("workflow")
    env.reset_task(0)
    attach = await env.table.call("sql", {"query": "ATTACH DATABASE '/tmp/x.db' AS x"})
    assert attach.startswith("error: SQL error")
    forever = await env.table.call("sql", {"query": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c"})
    assert forever.startswith("error: SQL error") and "interrupt" in forever
    two = await env.table.call("sql", {"query": "SELECT 1; DROP TABLE employees"})
    assert two.startswith("error:") and env.workspace.snapshot()["tables"] == ["employees"]


async def test_workflow_wrong_final_state_scores_zero_with_parts():
    env = make_env("workflow")
    env.reset_task(3)
    await env.astep(parse_action('<tool_call>{"name": "write_file", "arguments": {"path": "/junk.txt", "content": "x"}}</tool_call>'))
    result = await env.astep(Action("Done."))
    assert result.reward == 0.0 and result.info.reward_parts["files"] == 0.0


async def test_coding_rejects_wrong_code_early_exit_and_infinite_loops():
    from kpop.envs.families.coding.generated import make_problem

    env = make_env("coding", {"source": "generated"})
    seed = next(s for s in range(1, 60) if make_problem(s).kind == "fix")
    env.reset_task(seed)
    buggy = env.problem.statement.split("```python\n")[1].split("```")[0]
    attempts = {"buggy": f"```python\n{buggy}```", "exit": "```python\nimport sys\nsys.exit(0)\n```",
                "loop": "```python\nwhile True:\n    pass\n```", "none": "I am not sure."}
    for label, text in attempts.items():
        env.reset_task(seed)
        result = await bounded_step(env, Action(text))
        assert result.terminated and result.reward == 0.0, label
    env.reset_task(seed)
    tried = await env.table.call("run_python", {"code": "print(6 * 7)"})
    assert '"stdout": "42\\n"' in tried


async def test_coding_serves_humaneval_from_the_installed_package():
    env = make_env("coding", {"source": "humaneval"})
    task = env.reset_task(0)
    assert env.problem.task_id == "HumanEval/0" and "has_close_elements" in task.messages[1].content
    completion = env.problem.reference[len(env.problem.prompt):]
    result = await bounded_step(env, Action(f"```python\n{completion}```"))  # a bare completion is appended to the prompt
    assert result.reward == 1.0
