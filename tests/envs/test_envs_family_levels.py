"""Difficulty and demonstrator options of the search, workflow and tool_use families.

Each difficulty option changes the tasks (or the tools offered) the way its description says and
the reference solver still solves every task; each reference option changes only the reference's
route (the share of tasks on which it skips the looking-up calls), never the task, and the skipped
route still verifies, so a cold start keeps it as data. The defaults draw the tasks they always drew.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from kpop.envs.families.search.world import build_world, make_question
from kpop.envs.registry import make_env
from kpop.envs.solver import reference_policy, run_episode


def _solve(name: str, options: dict, seeds) -> list:
    async def play():
        return [await run_episode(make_env(name, options), s, reference_policy) for s in seeds]
    return asyncio.run(play())


def _task(name: str, options: dict, seed: int):
    env = make_env(name, options)
    task = env.reset_task(seed)
    return env, task


def _calls(out) -> list[str]:
    """Names of the tool calls the episode's assistant turns made."""
    return [json.loads(m.content.removeprefix("<tool_call>").removesuffix("</tool_call>"))["name"]
            for m in out.messages if m.role == "assistant" and m.content.startswith("<tool_call>")]


# search

@pytest.mark.parametrize("hops", [1, 2, 3])
def test_search_hops_bound_the_question_chain_and_the_solver_still_answers(hops):
    options = {"min_hops": hops, "max_hops": hops}
    lengths = {len(_task("search", options, s)[0].episode.facts["hops"]) for s in range(40)}
    assert lengths == {hops}
    assert all(o.reward == 1.0 for o in _solve("search", options, range(10)))


def test_search_default_hops_draw_the_original_multi_hop_questions():
    world = build_world(0)
    import random

    questions = [make_question(world, random.Random(s)) for s in range(60)]
    assert {len(q.hops) for q in questions} == {2, 3}
    assert not any(q.text.startswith(("Which company does", "In which city was")) and len(q.hops) == 1 for q in questions)
    with pytest.raises(ValueError):
        make_env("search", {"min_hops": 3, "max_hops": 2})


def test_search_k_sets_the_hits_of_a_search_without_k():
    for k in (1, 3):
        env, _ = _task("search", {"search_k": k}, 7)
        hits = json.loads(asyncio.run(env.table.call("search", {"query": "a city company born"})))
        assert len(hits) == k
        assert len(json.loads(asyncio.run(env.table.call("search", {"query": "a city company born", "k": 2})))) == 2


def test_search_without_the_open_tool_returns_whole_documents_and_solves_from_hits():
    options = {"open_tool": False, "min_hops": 1, "max_hops": 1, "search_k": 1}
    env, task = _task("search", options, 3)
    assert [t["function"]["name"] for t in task.tools] == ["search"]
    hop = env.episode.facts["hops"][0]
    hits = json.loads(asyncio.run(env.table.call("search", {"query": env.index.open(hop).title})))
    assert hits == [{"doc_id": hop, "text": env.index.open(hop).text}]
    outs = _solve("search", options, range(20))
    assert all(o.reward == 1.0 for o in outs) and all(_calls(o) == ["search"] for o in outs)
    _, full = _task("search", {}, 3)
    assert [t["function"]["name"] for t in full.tools] == ["search", "open"]


@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_search_reference_search_rate_skips_the_search_on_that_share_and_still_verifies(rate):
    options = {"open_tool": False, "min_hops": 1, "max_hops": 1, "search_k": 1}
    outs = _solve("search", {**options, "reference_search_rate": rate}, range(200))
    assert all(o.reward == 1.0 for o in outs)
    searched = [bool(_calls(o)) for o in outs]
    assert sum(searched) / len(searched) == pytest.approx(rate, abs=0.07)
    plain = _solve("search", options, range(200))
    assert [o.messages[:2] for o in outs] == [o.messages[:2] for o in plain]   # same questions


# workflow

def test_workflow_kinds_restrict_the_jobs_and_all_tools_false_offers_only_the_plans_tools():
    kinds = {_task("workflow", {"kinds": ["meeting_from_file"]}, s)[0].episode.facts["kind"] for s in range(30)}
    assert kinds == {"meeting_from_file"}
    assert len({_task("workflow", {}, s)[0].episode.facts["kind"] for s in range(30)}) == 5
    _, few = _task("workflow", {"kinds": ["meeting_from_file"], "all_tools": False}, 1)
    _, many = _task("workflow", {"kinds": ["meeting_from_file"]}, 1)
    assert [t["function"]["name"] for t in few.tools] == ["read_file", "create_event"] and len(many.tools) == 7
    assert few.messages == many.messages
    assert all(o.reward == 1.0 for o in _solve("workflow", {"kinds": ["report_from_sql", "clear_day"], "all_tools": False}, range(10)))
    with pytest.raises(ValueError):
        make_env("workflow", {"kinds": ["nap"]})


@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_workflow_reference_read_rate_skips_the_reading_call_on_that_share_and_still_verifies(rate):
    outs = _solve("workflow", {"reference_read_rate": rate}, range(150))
    full = _solve("workflow", {}, range(150))
    assert all(o.reward == 1.0 for o in outs)
    skipped = [_calls(o) == _calls(f)[1:] for o, f in zip(outs, full)]
    assert sum(skipped) / len(skipped) == pytest.approx(1 - rate, abs=0.08)
    assert [o.messages[:2] for o in outs] == [o.messages[:2] for o in full]   # same jobs


def test_workflow_acting_without_reading_cannot_guess_the_meeting():
    env, _ = _task("workflow", {"kinds": ["meeting_from_file"]}, 4)
    asyncio.run(env.astep(_action('<tool_call>{"name": "create_event", "arguments": {"title": "retro follow-up", '
                                  '"date": "2025-01-01", "start_hour": 17, "end_hour": 18}}</tool_call>')))
    assert asyncio.run(env.astep(_action("Done."))).reward == 0.0


def _action(text: str):
    from kpop.rollout.tool_parser import parse_action

    return parse_action(text)


# tool_use

def test_tool_use_kinds_store_size_and_tools_change_the_tasks():
    options = {"kinds": ["status"], "all_tools": False, "orders_per_customer": 1}
    env, task = _task("tool_use", options, 2)
    assert env.episode.facts["kind"] == "status"
    assert [t["function"]["name"] for t in task.tools] == ["find_customer", "list_orders"]
    assert len(env.store.orders) == 5 and len(env.store.customers) == 5
    big, _ = _task("tool_use", {"customers": 8, "orders_per_customer": 4}, 2)
    assert len(big.store.customers) == 8 and len(big.store.orders) == 32
    assert {_task("tool_use", {"kinds": ["cancel", "refund"]}, s)[0].episode.facts["kind"] for s in range(30)} == {"cancel", "refund"}
    assert all(o.reward == 1.0 for o in _solve("tool_use", {"customers": 2, "orders_per_customer": 1}, range(10)))
    default, _ = _task("tool_use", {}, 2)
    assert len(default.store.orders) == 15 and len(_task("tool_use", {}, 2)[1].tools) == 7


@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_tool_use_reference_lookup_rate_answers_read_only_requests_at_once_on_that_share(rate):
    options = {"sequence_weight": 0.0, "reference_lookup_rate": rate}
    outs = _solve("tool_use", options, range(200))
    kinds = [_task("tool_use", options, s)[0].episode.facts["kind"] for s in range(200)]
    assert all(o.reward == 1.0 for o in outs)
    read_only = [o for o, k in zip(outs, kinds) if k in ("status", "refund_denied")]
    assert all(_calls(o) for o, k in zip(outs, kinds) if k not in ("status", "refund_denied"))   # changes go through tools
    looked = [bool(_calls(o)) for o in read_only]
    assert sum(looked) / len(looked) == pytest.approx(rate, abs=0.1)
    weighted = _solve("tool_use", {"reference_lookup_rate": 0.0}, range(40))
    assert min(o.reward for o in weighted) == pytest.approx(0.75)   # skipped calls cost agreement
