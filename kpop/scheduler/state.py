"""The scheduler state a checkpoint holds, so `kpop run` on the same run directory resumes exactly.

Saved with every checkpoint as `<checkpoint>/scheduler_state.json`, written before the `last`
link moves to that checkpoint, so a checkpoint either has it or is not the resume point.

What it holds and why:
- step, rl_version, base: RL steps done; learner version at RL version 0 (token versions are
  learner versions; `base` lets a restored learner with a different numbering be re-based);
- the sampler position and curriculum state: the next draw after resume is the next undrawn one;
- accepted: the staleness manager's count, so admission capacity does not burst after restore;
- ready groups (complete, not yet trained) with their trajectories;
- pending groups: every group drawn but not complete, with the samples already finished and the
  finished turns of samples still running (paused rollouts; kpop.rollout.replay). On resume a
  running sample replays its recorded turns and continues from there; only the turn each one was
  in the middle of is generated again (and recorded turns past the staleness bound are dropped).
Together: every draw index below `sampler_position` is either trained (ledger, steps <= step),
ready, or pending, so after a restore no task is skipped or duplicated.
"""

from __future__ import annotations

from dataclasses import asdict

from pydantic import BaseModel

from kpop.rollout.agent_loop import Episode
from kpop.rollout.engine import GenerationResult
from kpop.rollout.replay import PartialEpisode, RecordedTurn
from kpop.scheduler.buffer import Group
from kpop.scheduler.dpr import DPRState
from kpop.trajectory import PROMPT_VERSION, Timing, Trajectory

STATE_FILE = "scheduler_state.json"


class EpisodeRecord(BaseModel):
    env_name: str
    seed: int
    group_id: str
    sample: int
    priority: int = 0


class TurnRecord(BaseModel):
    context_digest: str
    token_ids: list[int]
    logprobs: list[float]
    versions: list[int]
    finish_reason: str


class GroupRecord(BaseModel):
    group_id: str
    index: int
    episodes: list[EpisodeRecord]
    trajs: dict[int, dict]
    partial: dict[int, list[TurnRecord]] = {}


class SchedulerState(BaseModel):
    step: int
    rl_version: int
    base: int
    sampler_position: int
    curriculum: DPRState | None = None
    accepted: int
    ready: list[GroupRecord] = []
    pending: list[GroupRecord] = []
    counters: dict[str, float] = {}


def group_record(group: Group, partials: list[PartialEpisode] = ()) -> GroupRecord:
    """`partials`: recorded turns of this group's running samples (others are ignored)."""
    partial = {p.sample: [_turn_record(t) for t in p.turns] for p in partials
               if p.group_id == group.group_id and p.sample not in group.trajs}
    return GroupRecord(group_id=group.group_id, index=group.index,
                       episodes=[EpisodeRecord(**asdict(e)) for e in group.episodes],
                       trajs={k: asdict(t) for k, t in group.trajs.items()}, partial=partial)


def restore_group(rec: GroupRecord, old_base: int, new_base: int) -> Group:
    """Rebuild a group; token versions are re-based onto the restored learner's numbering."""
    shift = new_base - old_base
    trajs = {int(k): _trajectory(d, shift) for k, d in rec.trajs.items()}
    prefixes = {int(k): tuple(_turn(t, shift) for t in turns) for k, turns in rec.partial.items()}
    return Group(rec.group_id, rec.index, [Episode(**e.model_dump()) for e in rec.episodes], trajs, new_base,
                 prefixes=prefixes)


def _turn_record(turn: RecordedTurn) -> TurnRecord:
    r = turn.result
    return TurnRecord(context_digest=turn.context_digest, token_ids=r.token_ids, logprobs=r.logprobs,
                      versions=r.versions, finish_reason=r.finish_reason)


def _turn(rec: TurnRecord, shift: int) -> RecordedTurn:
    versions = [v + shift for v in rec.versions]
    return RecordedTurn(rec.context_digest, GenerationResult("replay", rec.token_ids, rec.logprobs, versions,
                                                             rec.finish_reason))


def _trajectory(d: dict, shift: int) -> Trajectory:
    d = dict(d)
    d["timing"] = Timing(**d["timing"])
    d["versions"] = [v if v == PROMPT_VERSION else v + shift for v in d["versions"]]
    return Trajectory(**d)
