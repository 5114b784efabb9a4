"""Recorded turns: how a paused episode's finished turns survive a restart of the whole run.

An environment worker records every model turn of a running episode as a `RecordedTurn`: the
generation result (token ids, behaviour log-probs, per-token versions) and a digest of the
context the policy saw. A checkpoint stores the recorded turns of unfinished episodes; after a
restart the episode runs again from its task seed with `replaying(policy, prefix, record)`: the
environment is re-created and receives the same actions, and while the context it produces
matches the recorded digest, the recorded turn is returned instead of calling the engine.

Invariants:
- a recorded turn is replayed only if the context digest matches exactly, so a replayed token
  always follows the same context it was sampled in; at the first mismatch (an environment that
  did not reproduce its observation) the rest of the prefix is dropped and generation resumes
  fresh from that point, never mixing contexts;
- replayed turns keep their original log-probs and versions (their tokens are as old as they
  are), and they are recorded again, so a second restart replays them too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from kpop.rollout.agent_loop import Policy
from kpop.rollout.engine import GenerationResult


def context_digest(context_ids: Sequence[int]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(b",".join(str(t).encode() for t in context_ids))
    return h.hexdigest()


@dataclass(frozen=True)
class RecordedTurn:
    context_digest: str
    result: GenerationResult


@dataclass(frozen=True)
class PartialEpisode:
    """The finished turns of an episode still running on a worker (what a checkpoint keeps)."""

    group_id: str
    sample: int
    turns: tuple[RecordedTurn, ...]


class Replay:
    """Counts what a replaying policy did: turns replayed, and whether the prefix diverged."""

    def __init__(self, prefix: Sequence[RecordedTurn]) -> None:
        self.pending = list(prefix)
        self.replayed = 0
        self.diverged = False


def replaying(policy: Policy, replay: Replay, record: list[RecordedTurn]) -> Policy:
    """`policy`, except that turns of the recorded prefix are returned while the context matches;
    every turn (replayed or generated) is appended to `record`."""

    async def act(context_ids: list[int], max_tokens: int) -> GenerationResult:
        digest = context_digest(context_ids)
        head = replay.pending[0] if replay.pending else None
        if head is not None and head.context_digest == digest and len(head.result.token_ids) <= max_tokens:
            replay.pending.pop(0)
            replay.replayed += 1
            turn = head
        else:
            replay.diverged = replay.diverged or head is not None
            replay.pending.clear()
            turn = RecordedTurn(digest, await policy(context_ids, max_tokens))
        record.append(turn)
        return turn.result

    return act
