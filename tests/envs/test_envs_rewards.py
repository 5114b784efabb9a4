"""Reward helpers (objectives.md) and their composition from the RunSpec."""

from __future__ import annotations

import pytest

from kpop.envs.registry import list_envs
from kpop.envs.rewards import (
    EpisodeView,
    compression_ratio,
    dynamic_length_rewards,
    format_penalty,
    group_shaping,
    repetition_penalty,
    shape_reward,
    tool_sequence_agreement,
)
from kpop.spec.envs import EnvEntrySpec


def test_dynamic_length_prefers_short_correct_and_never_rewards_wrong_length():
    lengths, correct = [10, 20, 30], [True, True, False]
    r = dynamic_length_rewards(lengths, correct, alpha=1.0)
    assert r[0] == pytest.approx(0.5) and r[1] == pytest.approx(0.0, abs=1e-6) and r[2] == pytest.approx(-0.5)
    assert dynamic_length_rewards([5, 9], [False, False], 1.0)[0] == 0.0  # wrong and shortest: min(p, 0) = 0


def test_format_penalty_catches_forbidden_tags_only():
    assert format_penalty("<think>hmm</think> 4", ["think"], 0.5) == -0.5
    assert format_penalty("</THINK>", ["think"]) == -0.5
    assert format_penalty("I think it is 4", ["think"]) == 0.0


def test_repetition_penalty_grows_with_compressibility():
    prose = "The quick brown fox jumps over the lazy dog while seven wizards quietly judge boxing matches; " \
            "pack my box with five dozen liquor jugs, sphinx of black quartz, judge my vow."
    looped = "again and again " * 100
    assert compression_ratio(looped) > 10 > compression_ratio(prose)
    assert repetition_penalty(prose * 1, min_chars=50) == 0.0
    assert repetition_penalty(looped, threshold=4.0, weight=0.5) == -0.5
    assert repetition_penalty("aaaa", min_chars=200) == 0.0


def test_tool_sequence_agreement_penalises_extra_and_missing_calls():
    ref = [("a", {"x": 1}), ("b", {})]
    assert tool_sequence_agreement(ref, ref) == 1.0
    assert tool_sequence_agreement([("b", {}), ("a", {"x": 1})], ref) == pytest.approx(0.5)
    extra = tool_sequence_agreement(ref + [("c", {})], ref)
    assert 0.7 < extra < 1.0
    assert tool_sequence_agreement([("a", {"x": 2}), ("b", {})], ref) == pytest.approx(0.625)
    assert tool_sequence_agreement([], ref) == 0.0 and tool_sequence_agreement([], []) == 1.0


def test_shape_reward_composes_terms_from_the_spec_in_order_and_clips():
    entry = EnvEntrySpec(name="tool_use", rewards=[{"type": "format"}, {"type": "tool_sequence", "weight": 0.5}, {"type": "dynamic_length"}])
    view = EpisodeView(texts=["<think>x</think>"], calls=[("a", {})], reference_calls=[("a", {}), ("b", {})])
    reward, parts = shape_reward(1.0, {"task": 1.0}, view, entry.rewards)
    agreement = tool_sequence_agreement(view.calls, view.reference_calls)
    assert reward == pytest.approx(0.5 * 0.5 + 0.5 * agreement)
    assert parts["shape/format"] == -0.5 and "shape/dynamic_length" not in parts
    assert shape_reward(0.0, {}, view, [{"type": "format", "penalty": 1.0}, {"type": "format", "penalty": 1.0}])[0] == -1.0
    assert shape_reward(0.7, {}, view, [])[0] == 0.7


def test_group_shaping_applies_the_length_term_and_reports_it_as_a_part():
    (short, short_parts), (long, long_parts) = group_shaping([1.0, 1.0], [10, 30], [True, True],
                                                             [{"type": "dynamic_length", "alpha": 0.2}])
    assert short == pytest.approx(1.1) and long == pytest.approx(0.9)
    assert short_parts["shape/dynamic_length"] == pytest.approx(0.1) and long_parts["shape/dynamic_length"] == pytest.approx(-0.1)
    # episode-level terms are the environment's: nothing added here, no part
    assert group_shaping([0.5], [10], [False], [{"type": "format"}]) == [(0.5, {})]


BUILTIN = [r.name for r in list_envs() if r.source == "builtin"]


@pytest.mark.parametrize("name", BUILTIN)
def test_every_family_applies_spec_terms_on_the_final_step(name):
    import asyncio

    from kpop.envs.contract import Action
    from kpop.envs.registry import make_env

    def final(terms):
        env = make_env(name)
        env.set_reward_terms(terms)
        env.reset_task(0)
        return asyncio.run(env.astep(Action("<think>no</think> Done.")))

    plain, shaped = final([]), final([{"type": "format", "penalty": 0.3}])
    assert shaped.terminated and shaped.info.reward_parts["shape/format"] == -0.3
    assert shaped.reward == pytest.approx(max(-1.0, plain.reward - 0.3))
    assert shaped.info.reward_parts["task"] == plain.info.reward_parts["task"]   # the task score stays unshaped


def test_the_calculator_shapes_its_task_score_with_the_reference_call():
    import asyncio

    from kpop.envs.registry import make_env
    from kpop.rollout.tool_parser import parse_action

    async def episode(terms, turns):
        env = make_env("calculator")
        env.set_reward_terms(terms)
        env.reset_task(4)
        for text in [t.format(expr=env.expression, answer=env.answer) for t in turns]:
            result = await env.astep(parse_action(text))
        return result

    call = '<tool_call>{{"name": "calculator", "arguments": {{"expression": "{expr}"}}}}</tool_call>'
    solved = asyncio.run(episode([{"type": "tool_sequence", "weight": 0.5}], [call, "Answer: {answer}"]))
    assert solved.reward == 1.0 and solved.info.reward_parts["shape/tool_sequence"] == 1.0
    guessed = asyncio.run(episode([{"type": "tool_sequence", "weight": 0.5}], ["Answer: {answer}"]))
    assert guessed.reward == pytest.approx(0.5) and guessed.info.reward_parts == {
        "task": 1.0, "correct": 1.0, "format": 1.0, "used_tool": 0.0, "shape/tool_sequence": 0.0}
    assert asyncio.run(episode([], ["Answer: {answer}"])).reward == 1.0          # no terms: the task score
