"""The `instructions` family: each rule checker on hand-written replies, the reward parts computed
by hand, deterministic generation, the reference solver at 1.0, random play at 0, held-out topics,
and the conformance suite (also through `kpop envs check`)."""

from __future__ import annotations

import argparse
import asyncio
import json

import pytest

from kpop.envs.conformance import run_conformance
from kpop.envs.contract import Action
from kpop.envs.families.instructions.rules import KINDS, Rule, words
from kpop.envs.families.instructions.scoring import grade
from kpop.envs.families.instructions.tasks import (
    HELD_OUT_TOPICS,
    JSON_KEYS,
    PADDING,
    TRAIN_TOPICS,
    InstructionTask,
    Topic,
    generate,
)
from kpop.envs.random_policy import RandomPolicy
from kpop.envs.registry import make_env
from kpop.envs.solver import reference_policy, run_episode
from kpop.rollout.tool_parser import parse_action
from kpop.spec.envs import EnvEntrySpec
from kpop.tasks import HELD_OUT_BASE, TaskSampler

OCEAN = Topic("ocean", ("waves", "salt", "tide", "coral", "whales", "currents", "shore", "depth"))

# (rule, a reply that satisfies it, a reply that violates it)
RULE_CASES = [
    (Rule("max_words", count=3), "Ocean waves, 42 times.", "The ocean has waves."),
    (Rule("min_words", count=4), "The ocean's waves don't stop.", "Ocean waves 1 2 3 4."),
    (Rule("include_words", ("waves", "tide")), "TIDE and Waves.", "tides and waves"),
    (Rule("forbid_word", ("salt",)), "Salty water, no salts.", "It is SALT."),
    (Rule("numbered_list", count=2), "1. Waves\n\n2) Tide\n", "Two things:\n1. Waves\n2. Tide"),
    (Rule("json_keys", ("title", "summary")), '```json\n{"summary": "waves", "title": "ocean"}\n```', '{"title": "ocean", "summary": ""}'),
    (Rule("lowercase"), "the ocean, 42.", "The ocean."),
    (Rule("uppercase"), "THE OCEAN, 42.", "42."),
]


def _task(*rules: Rule) -> InstructionTask:
    return InstructionTask(0, OCEAN, "Describe the ocean.", rules, "")


def _grade(task: InstructionTask, text: str):
    return grade(task, parse_action(text), budget=120, max_chars=8000)


async def _rewards(seeds, policy_factory, options=None) -> list[float]:
    outs = await asyncio.gather(*(run_episode(make_env("instructions", options), s, policy_factory(s)) for s in seeds))
    return [o.reward for o in outs]


def test_rule_cases_cover_every_kind():
    assert sorted(r.kind for r, _, _ in RULE_CASES) == sorted(KINDS)


@pytest.mark.parametrize(("rule", "good", "bad"), RULE_CASES, ids=[r.kind for r, _, _ in RULE_CASES])
def test_each_rule_holds_for_a_satisfying_reply_only(rule, good, bad):
    assert rule.holds(good) and not rule.holds(bad)
    assert rule.instruction().endswith(".")


def test_words_are_runs_of_letters():
    assert words('1. The ocean\'s "waves", don\'t {"a_b": 42}') == ["The", "ocean's", "waves", "don't", "a", "b"]


def test_reward_parts_by_hand_for_a_partly_followed_task():
    task = _task(Rule("max_words", count=5), Rule("include_words", ("waves",)), Rule("forbid_word", ("salt",)), Rule("lowercase"))
    result = _grade(task, "the ocean has waves and salt")  # 6 words: too long, uses "salt"
    assert result.parts == {"rule/max_words": 0.0, "rule/include_words": 1.0, "rule/forbid_word": 0.0, "rule/lowercase": 1.0,
                            "constraints": 0.5, "informative": 1.0, "errors": 0.0, "hallucinated": 0.0, "verbosity": 0.2}
    assert result.score == pytest.approx(0.5 * (1 - 0.2)) and result.details["failed"] == ["max_words", "forbid_word"]


def test_a_reply_that_ignores_the_topic_earns_nothing():
    result = _grade(_task(Rule("lowercase"), Rule("max_words", count=10)), "yes done")
    assert result.parts["constraints"] == 1.0 and result.parts["informative"] == 0.0 and result.score == 0.0


def test_json_extra_keys_are_hallucinated_and_invalid_json_is_an_error():
    task = _task(Rule("json_keys", ("title", "summary")))
    extra = _grade(task, '{"title": "Ocean", "summary": "waves", "author": "me"}')
    assert extra.parts["rule/json_keys"] == 0.0 and extra.parts["hallucinated"] == pytest.approx(1 / 3)
    assert extra.parts["errors"] == 0.0 and extra.score == 0.0
    broken = _grade(task, '{"title": "Ocean", "summary": "waves"')
    assert broken.parts["errors"] == 1.0 and broken.score == 0.0 and "JSON" in broken.details["error"]
    good = _grade(task, '{"title": "Ocean", "summary": "waves"}')
    assert good.score == 1.0 and good.parts["hallucinated"] == 0.0


def test_verbosity_grows_past_the_budget_without_a_length_rule():
    task = _task(Rule("include_words", ("waves",)))
    result = grade(task, Action("ocean waves " * 15), budget=20, max_chars=8000)  # 30 words, budget 20
    assert result.parts["verbosity"] == 0.5 and result.score == 0.5


@pytest.mark.parametrize(("label", "text", "verbose"), [
    ("tool_call", '<tool_call>{"name": "search", "arguments": {}}</tool_call>', 0.0),
    ("bad_tool_json", '<tool_call>{"name": "x", "arguments": {</tool_call>', 0.0),
    ("binary", "ocean \x00\xff waves", 0.0),
    ("huge", "ocean " * 2000, 1.0),
])
async def test_malformed_turns_end_the_episode_with_an_error_and_zero_reward(label, text, verbose):
    env = make_env("instructions")
    env.reset_task(4)
    result = await env.astep(parse_action(text))
    assert result.terminated and result.reward == 0.0
    assert result.info.reward_parts["errors"] == 1.0 and result.info.reward_parts["verbosity"] == verbose
    assert result.observations[0].content.startswith("error:")
    after = await env.astep(Action("the ocean"))
    assert after.terminated and after.reward == 0.0 and "over" in after.info.details["error"]


async def test_spec_reward_terms_shape_the_final_step():
    env = make_env("instructions")
    env.set_reward_terms([{"type": "format", "penalty": 0.3}])
    env.reset_task(0)
    result = await env.astep(Action("<think>no</think> Done."))
    assert result.reward == pytest.approx(-0.3) and result.info.reward_parts["shape/format"] == -0.3
    assert result.info.reward_parts["task"] == 0.0 and env.reward_range == (-1.0, 1.0)


def test_generation_is_deterministic_and_varied():
    assert [generate(s) for s in range(50)] == [generate(s) for s in range(50)]
    a, b = make_env("instructions"), make_env("instructions")
    assert a.reset_task(7) == b.reset_task(7) and a.reset_task(7).tools == []
    assert len({generate(s).request for s in range(50)}) > 45
    counts = {len(generate(s).rules) for s in range(200)}
    assert counts == {1, 2, 3, 4}
    assert {len(generate(s, 5, 5).rules) for s in range(20)} == {5}


def test_reference_words_never_collide_with_rules():
    topic_words = {w for t in TRAIN_TOPICS + HELD_OUT_TOPICS for w in (t.keyword, *t.related)}
    assert not topic_words & set(PADDING) and not topic_words & set(JSON_KEYS) and not set(PADDING) & set(JSON_KEYS)


@pytest.mark.parametrize("options", [{}, {"min_rules": 5, "max_rules": 5}])
async def test_reference_solver_scores_one_on_training_and_held_out_seeds(options):
    seeds = [*range(150), *range(HELD_OUT_BASE, HELD_OUT_BASE + 150)]
    assert await _rewards(seeds, lambda s: reference_policy, options) == [1.0] * len(seeds)


async def test_random_policy_scores_near_zero():
    rewards = await _rewards(range(50), RandomPolicy)
    assert sum(rewards) / len(rewards) < 0.1


def test_held_out_tasks_are_disjoint_from_training_tasks():
    assert not {t.keyword for t in TRAIN_TOPICS} & {t.keyword for t in HELD_OUT_TOPICS}
    sampler = TaskSampler([EnvEntrySpec(name="instructions")], seed=3)
    train = [generate(g[0].seed) for g in sampler.next_groups(100, 1)]
    held = [generate(e.seed) for e in sampler.held_out(100)]
    assert {t.topic for t in train} <= set(TRAIN_TOPICS) and {t.topic for t in held} <= set(HELD_OUT_TOPICS)
    assert not {t.request for t in train} & {t.request for t in held}


async def test_held_out_tasks_on_training_topics_when_asked_and_training_tasks_unchanged():
    sampler = TaskSampler([EnvEntrySpec(name="instructions")], seed=3)
    train, held = [g[0] for g in sampler.next_groups(100, 1)], sampler.held_out(100)
    seen = make_env("instructions", {"held_out_topics": False})
    seen_held = [seen.reset_task(e.seed) for e in held]
    assert {generate(e.seed, held_out_topics=False).topic for e in held} <= set(TRAIN_TOPICS)
    assert {m.content for t in seen_held for m in t.messages[1:]} == {generate(e.seed, held_out_topics=False).request for e in held}
    assert [generate(e.seed, held_out_topics=False) for e in train] == [generate(e.seed) for e in train]
    assert await _rewards([e.seed for e in held], lambda s: reference_policy, {"held_out_topics": False}) == [1.0] * 100


def test_options_are_checked():
    with pytest.raises(ValueError, match="rules_per_task"):
        make_env("instructions", {"rules_per_task": 2})
    with pytest.raises(ValueError, match="min_rules 4 is larger than max_rules 2"):
        make_env("instructions", {"min_rules": 4, "max_rules": 2})


def test_conformance_suite_and_cli_check_pass(capsys):
    results = run_conformance("instructions", seeds=3)
    assert [r for r in results if not r.passed] == []
    from kpop.cli import envs_cmd

    parser = argparse.ArgumentParser()
    envs_cmd.add_arguments(parser)
    assert envs_cmd.run(parser.parse_args(["check", "instructions", "--json"])) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True
