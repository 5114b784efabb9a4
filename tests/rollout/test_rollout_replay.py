"""Replaying recorded turns after a restart (kpop.rollout.replay), against a scripted policy whose
every call is counted: a matching context returns the recorded turn without a call, the first
mismatch drops the rest of the prefix, and every turn is recorded again."""

import asyncio

from kpop.rollout.engine import GenerationResult
from kpop.rollout.replay import RecordedTurn, Replay, context_digest, replaying


def scripted(calls):
    async def policy(context_ids, max_tokens):
        calls.append(list(context_ids))
        return GenerationResult(f"live{len(calls)}", [100 + len(calls)], [-0.1], [9], "stop")
    return policy


def recorded(context, token, version):
    return RecordedTurn(context_digest(context), GenerationResult("old", [token], [-2.0], [version], "stop"))


def test_matching_contexts_replay_the_recorded_turns_with_their_versions():
    calls, record = [], []
    replay = Replay([recorded([1, 2], 50, 3), recorded([1, 2, 50, 7], 51, 4)])
    act = replaying(scripted(calls), replay, record)
    first = asyncio.run(act([1, 2], 8))
    second = asyncio.run(act([1, 2, 50, 7], 8))
    third = asyncio.run(act([1, 2, 50, 7, 51, 7], 8))
    assert (first.token_ids, first.logprobs, first.versions) == ([50], [-2.0], [3])
    assert (second.token_ids, second.versions) == ([51], [4])
    assert third.token_ids == [101] and calls == [[1, 2, 50, 7, 51, 7]]     # only the third was generated
    assert replay.replayed == 2 and not replay.diverged
    assert [t.result.token_ids for t in record] == [[50], [51], [101]]
    assert record[2].context_digest == context_digest([1, 2, 50, 7, 51, 7])


def test_a_different_context_drops_the_rest_of_the_prefix():
    calls, record = [], []
    replay = Replay([recorded([1, 2], 50, 3), recorded([1, 2, 50, 7], 51, 4)])
    act = replaying(scripted(calls), replay, record)
    asyncio.run(act([1, 2], 8))
    out = asyncio.run(act([1, 2, 50, 8], 8))          # the environment answered differently
    asyncio.run(act([1, 2, 50, 7], 8))                # even a later match is not replayed
    assert out.token_ids == [101] and len(calls) == 2
    assert replay.replayed == 1 and replay.diverged and not replay.pending


def test_a_recorded_turn_longer_than_the_budget_is_generated_again():
    calls, record = [], []
    turn = RecordedTurn(context_digest([1]), GenerationResult("old", [5, 6, 7], [-1.0] * 3, [2] * 3, "length"))
    act = replaying(scripted(calls), Replay([turn]), record)
    assert asyncio.run(act([1], 2)).token_ids == [101] and len(calls) == 1


def test_digest_depends_on_every_token_and_its_position():
    assert context_digest([1, 23]) != context_digest([12, 3])
    assert context_digest([1, 2, 3]) == context_digest((1, 2, 3)) != context_digest([1, 2])
