"""The `instructions` family's difficulty and reference options: `slots` limits the kinds of rule a
task draws (and leaves every task as it was at its default), `reference_pad_to` pads at-least-n
replies past the bound, `reference_exact_rate` puts the reference reply exactly on its length rule
on that share of tasks; every reference reply still scores 1.0 and the tasks stay the same."""

from __future__ import annotations

import asyncio

import pytest

from kpop.envs.families.instructions.rules import words
from kpop.envs.families.instructions.tasks import SLOTS, generate
from kpop.envs.registry import make_env
from kpop.envs.solver import reference_policy, run_episode

LENGTH = {"max_rules": 1, "slots": ["length"], "held_out_topics": False}
KIND_SLOT = {"max_words": "length", "min_words": "length", "include_words": "include", "forbid_word": "forbid",
             "numbered_list": "format", "json_keys": "format", "lowercase": "case", "uppercase": "case"}


def _play(options: dict, seeds) -> list:
    async def play():
        return [await run_episode(make_env("instructions", options), s, reference_policy) for s in seeds]
    return asyncio.run(play())


def _replies(options: dict, seeds) -> list[tuple]:
    """(the task's rule, the reference reply's word count) per seed."""
    env = make_env("instructions", options)
    out = []
    for s in seeds:
        env.reset_task(s)
        out.append((env.current.rules[0], len(words(env.reference_action()))))
    return out


def test_slots_limit_the_kinds_of_rule_and_the_default_is_every_slot():
    assert [generate(s) for s in range(100)] == [generate(s, slots=SLOTS) for s in range(100)]
    for slots in (["length"], ["case", "format"]):
        env = make_env("instructions", {"slots": slots, "max_rules": 4})
        tasks = [env.reset_task(s) and env.current for s in range(100)]
        assert {KIND_SLOT[r.kind] for t in tasks for r in t.rules} == set(slots)
        assert max(len(t.rules) for t in tasks) == len(slots)   # max_rules capped at the slots allowed
    everything = make_env("instructions")
    assert {KIND_SLOT[r.kind] for s in range(100) for r in (everything.reset_task(s) and everything.current).rules} == set(SLOTS)


def test_slot_options_are_checked():
    with pytest.raises(ValueError, match="slots"):
        make_env("instructions", {"slots": ["colour"]})
    with pytest.raises(ValueError, match="min_rules 2 is more than the 1 slot"):
        make_env("instructions", {"slots": ["case"], "min_rules": 2})


def test_reference_pads_at_least_n_replies_to_pad_to_and_leaves_the_rest():
    plain, padded = _replies(LENGTH, range(200)), _replies({**LENGTH, "reference_pad_to": 35}, range(200))
    assert [r for r, _ in plain] == [r for r, _ in padded]           # the same tasks
    for (rule, n_plain), (_, n_padded) in zip(plain, padded):
        if rule.kind == "min_words":
            assert (n_plain, n_padded) == (rule.count, 35)
        else:
            assert n_plain == n_padded == 1                          # at most N: the topic word alone
    assert {o.reward for o in _play({**LENGTH, "reference_pad_to": 35}, range(100))} == {1.0}


@pytest.mark.parametrize("rate", [0.0, 0.7, 1.0])
def test_reference_sits_exactly_on_the_length_bound_on_the_configured_share(rate):
    options = {**LENGTH, "reference_pad_to": 35, "reference_exact_rate": rate}
    replies = _replies(options, range(300))
    exact = [n == rule.count for rule, n in replies]
    assert sum(exact) / len(exact) == pytest.approx(rate, abs=0.07)
    assert [r for r, _ in replies] == [r for r, _ in _replies(LENGTH, range(300))]   # the same tasks
    assert _replies(options, range(300)) == replies                                  # a property of the task
    assert {o.reward for o in _play(options, range(100))} == {1.0}


def test_exact_replies_satisfy_every_other_rule_too():
    options = {"min_rules": 5, "max_rules": 5, "reference_exact_rate": 1.0}
    outs = _play(options, range(60))
    assert {o.reward for o in outs} == {1.0}
    env = make_env("instructions", options)
    for s in range(60):
        env.reset_task(s)
        bound = next(r for r in env.current.rules if r.kind in ("min_words", "max_words"))
        assert len(words(env.reference_action())) == bound.count
