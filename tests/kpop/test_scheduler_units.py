"""Pure scheduler units against hand-computed numbers: capacity, buffer, budget, DPR, tail, state."""

import random

import pytest

from kpop.metrics import trajectory_stats
from kpop.rollout.agent_loop import Episode
from kpop.scheduler.budget import StepBudget
from kpop.scheduler.buffer import Group, GroupBuffer
from kpop.scheduler.dpr import DynamicPassRating
from kpop.scheduler.horizon import DrawHorizon
from kpop.scheduler.staleness import StalenessManager
from kpop.scheduler.state import group_record, restore_group
from kpop.scheduler.stats import resumed_count
from kpop.scheduler.tail import LiveRequest, choose_migrations
from kpop.spec.envs import EnvEntrySpec
from kpop.spec.run import DPRSpec
from kpop.tasks import TaskSampler
from kpop.trajectory import Trajectory


def traj(gen_versions, reward=0.0, gid="g"):
    n = len(gen_versions)
    return Trajectory("t", "calc", [1] + [2] * n, [0] + [1] * n, [0.0] + [-0.5] * n, [-1] + list(gen_versions),
                      reward=reward, group_id=gid)


def group(gid, versions_per_sample, index=0, base=0):
    eps = [Episode("calc", 1, gid, k) for k in range(len(versions_per_sample))]
    return Group(gid, index, eps, {k: traj(v, gid=gid) for k, v in enumerate(versions_per_sample)}, base)


def test_capacity_formula_and_eta_zero_is_synchronous():
    s = StalenessManager(max_staleness=0, batch_groups=4, max_concurrent=100)
    assert s.capacity() == 4                        # (0 + 0 + 1) * 4 - 0
    s.on_submit(4)
    assert s.capacity() == 0                        # nothing more until the step
    for _ in range(4):
        s.on_accept()
    assert s.capacity() == 0                        # 4 accepted, version still 0
    s.on_version(1)
    assert s.capacity() == 4                        # (0 + 1 + 1) * 4 - 4
    s2 = StalenessManager(max_staleness=2, batch_groups=3, max_concurrent=5)
    assert s2.capacity() == 5                       # min(5 - 0, (1 + 0 + 1) * 3 - 0): eta opens to 1
    s2.on_submit(5)
    s2.on_accept()
    assert s2.capacity() == 1                       # min(5 - 4, 6 - (1 + 4))
    s2.on_requeue()                                 # a stale group gives its slot back
    assert s2.accepted == 0 and s2.capacity() == 1


def test_the_staleness_window_opens_one_version_per_step():
    s = StalenessManager(max_staleness=4, batch_groups=2, max_concurrent=100)
    totals = []
    for v in range(7):
        s.on_version(v)
        totals.append(s.capacity() + s.accepted + s.running)
    # (min(4, v + 1) + v + 1) * 2: 2B before the first update, full (eta + v + 1) * B from v = 3
    assert totals == [4, 8, 12, 16, 18, 20, 22]


def simulate_draws(horizon: DrawHorizon, steps: int, eta: int = 4, batch: int = 2) -> int:
    """Admit up to capacity (capped by the horizon), every group completes at once, each step
    consumes B: how many groups were drawn over the run (after its last version, too)."""
    s, drawn = StalenessManager(max_staleness=eta, batch_groups=batch, max_concurrent=100), 0
    for v in range(steps + 1):
        s.on_version(v)
        n = horizon.allow(s.capacity(), starving=False)
        horizon.take(n)
        s.on_submit(n)
        for _ in range(n):
            s.on_accept()
        drawn += n
    return drawn


def test_the_draw_horizon_stops_admission_at_the_runs_last_step():
    # 5 steps of B = 2: exactly 10 draws; staleness alone admits (4 + 5 + 1) * 2 = 20 by the end
    assert simulate_draws(DrawHorizon.for_run(5, 2, held=0), 5) == 10
    assert simulate_draws(DrawHorizon(None), 5) == 20
    # resumed with 3 steps left and 4 groups already ready or pending: 2 fresh draws
    assert simulate_draws(DrawHorizon.for_run(3, 2, held=4), 3) == 2
    h = DrawHorizon(0)
    assert h.allow(6, starving=False) == 0 and h.allow(6, starving=True) == 6   # never stalls a step


def test_recover_restores_capacity_without_burst():
    s = StalenessManager(2, 4, 100, version=3)
    s.accepted = 13      # 12 consumed + 1 buffered
    s.on_submit(2)       # 2 groups were in flight at the checkpoint
    before = s.capacity()
    r = StalenessManager(2, 4, 100)
    r.recover(3, 13)
    r.on_submit(2)       # the pending groups are re-submitted on resume
    assert r.capacity() == before == (2 + 3 + 1) * 4 - 15


def test_buffer_counts_each_sample_once_and_finds_stale_groups():
    buf = GroupBuffer()
    g = Group("a", 0, [Episode("calc", 1, "a", 0), Episode("calc", 1, "a", 1)], base=10)
    buf.open(g)
    assert buf.add("a", 0, traj([10, 10])) is None
    with pytest.raises(ValueError):
        buf.add("a", 0, traj([10]))
    assert buf.add("a", 1, traj([11, 12])) is g and len(buf) == 1
    assert g.oldest_version() == 0 and g.generated_tokens() == 4
    assert buf.stale(version=2, max_staleness=2) == []
    assert buf.stale(version=3, max_staleness=2) == [g]
    with pytest.raises(ValueError):
        buf.open(Group("a", 0, []))


def test_running_groups_become_due_one_update_before_they_would_be_stale():
    buf = GroupBuffer()
    fresh = Group("fresh", 0, [Episode("calc", 1, "fresh", 0)], admitted=3)
    old = Group("old", 1, [Episode("calc", 1, "old", 0), Episode("calc", 1, "old", 1)], admitted=3)
    buf.open(fresh)
    buf.open(old)
    buf.add("old", 0, traj([1, 2]))          # a finished sample holds tokens of version 1 (base 0)
    assert old.oldest_bound() == 1 and fresh.oldest_bound() == 3
    assert buf.due(version=2, max_staleness=2) == []
    assert buf.due(version=3, max_staleness=2) == [old]           # v - eta = 1: trained now or never
    assert buf.due(version=5, max_staleness=2) == [fresh, old]
    assert buf.due(version=3, max_staleness=0) == [fresh, old]    # eta = 0: wait for every group


def test_budget_tokens_and_group_count_take_oldest_first():
    old, mid, new = group("old", [[0, 0, 0]]), group("mid", [[1] * 5]), group("new", [[2] * 4])
    ready = [new, mid, old]
    by_count = StepBudget(token_budget=0, batch_groups=2)
    assert by_count.is_ready(ready) and by_count.select(ready) == [old, mid]
    assert not by_count.is_ready([new])
    by_tokens = StepBudget(token_budget=7, batch_groups=2)
    assert by_tokens.is_ready(ready) and not by_tokens.is_ready([new])   # 12 >= 7; 4 < 7
    assert by_tokens.select(ready) == [old, mid]                        # 3 + 5 = 8 >= 7


def test_dpr_weights_and_pick():
    dpr = DynamicPassRating(DPRSpec(window=2, solved_rate=0.9, solved_weight=0.1, unstable_bonus=1.0))
    assert dpr.record("calc", 1, [1.0, 1.0, 1.0, 1.0]) == 1.0
    assert dpr.record("calc", 2, [1.0, 0.0, 0.0, 0.0]) == 0.25
    dpr.record("calc", 3, [0.0, 0.0])
    assert dpr.weight(dpr.tasks[("calc", 1)]) == 0.1                  # solved
    assert dpr.weight(dpr.tasks[("calc", 2)]) == pytest.approx(1 + 4 * 0.25 * 0.75)   # unstable: 1.75
    assert dpr.weight(dpr.tasks[("calc", 3)]) == 1.0                  # unsolved
    dpr.record("calc", 2, [1.0, 1.0])
    dpr.record("calc", 2, [1.0, 1.0])
    assert dpr.tasks[("calc", 2)] == [1.0, 1.0]                        # window of 2
    rng = random.Random(0)
    picks = [dpr.pick("calc", rng) for _ in range(2000)]
    assert picks.count(3) > 5 * picks.count(1)                        # unsolved >> solved
    assert dpr.pick("search", rng) is None
    restored = DynamicPassRating(dpr.spec)
    restored.restore(dpr.state())
    assert restored.tasks == dpr.tasks


def test_sampler_with_curriculum_is_deterministic_and_resumable():
    envs = [EnvEntrySpec(name="calculator", weight=1.0), EnvEntrySpec(name="search", weight=3.0)]
    dpr = DynamicPassRating(DPRSpec())
    s = TaskSampler(envs, 7, dpr, revisit_prob=0.5)
    first = [s.next_group(2) for _ in range(5)]
    for _, eps in first:
        dpr.record(eps[0].env_name, eps[0].seed, [0.0, 1.0])
    saved = s.state()
    tail = [s.next_group(2) for _ in range(20)]
    other = TaskSampler(envs, 7, DynamicPassRating(DPRSpec()), revisit_prob=0.5)
    other.restore(saved)
    assert [other.next_group(2) for _ in range(20)] == tail
    assert [i for i, _ in tail] == list(range(5, 25))                 # no index skipped or repeated
    assert all(e.priority == i for i, eps in tail for e in eps)       # older draws generate first
    seen = {(e[0].env_name, e[0].seed) for _, e in first}
    assert any((e[0].env_name, e[0].seed) in seen for _, e in tail)   # some draws revisit
    assert {e[0].env_name for _, e in first + tail} == {"calculator", "search"}


def test_tail_migration_moves_oldest_from_busiest_to_idle():
    live = [LiveRequest("a", 0, 9.0), LiveRequest("b", 0, 5.0), LiveRequest("c", 0, 1.0),
            LiveRequest("d", 0, 7.0), LiveRequest("e", 1, 3.0)]
    moves = choose_migrations(live, [0, 1, 2], min_age_s=2.0, max_moves=4)
    assert [m.request_id for m in moves] == ["a", "d"]                # gap 4 - 0 = 4 -> 2 moves
    assert choose_migrations(live, [0, 1, 2], min_age_s=8.0, max_moves=4) == [live[0]]
    assert choose_migrations(live[3:], [0, 1], 0.0, 4) == []           # loads 1 vs 1
    assert choose_migrations(live, [0], 0.0, 4) == []                  # one engine: nowhere to go


def test_staleness_is_measured_from_the_trained_policy_in_engine_numbering_and_resumed_counted():
    g = group("g", [[3, 3, 4], [2, 4]], base=0)
    s = trajectory_stats(list(g.trajs.values()), policy_version=4 + g.base)   # as kpop_loop passes it
    assert s["staleness_hist"] == [2, 2, 1] and s["staleness_max"] == 2.0 and s["staleness_mean"] == 0.8
    shifted = group("g", [[13, 13, 14], [12, 14]], base=10)                    # restored under base 10
    assert trajectory_stats(list(shifted.trajs.values()), policy_version=4 + shifted.base)["staleness_hist"] == [2, 2, 1]
    assert resumed_count([g]) == 2


def test_state_roundtrip_rebases_versions():
    g = group("g", [[5, 6], [6]], index=9, base=4)
    back = restore_group(group_record(g), old_base=4, new_base=0)
    assert back.index == 9 and back.base == 0 and back.episodes == g.episodes
    assert back.trajs[0].versions == [-1, 1, 2] and back.oldest_version() == g.oldest_version() == 1


def test_state_keeps_running_samples_turns_and_restart_drops_stale_prefixes():
    from kpop.rollout.engine import GenerationResult
    from kpop.rollout.replay import PartialEpisode, RecordedTurn

    g = Group("g", 3, [Episode("calc", 1, "g", k) for k in range(3)], {0: traj([6, 6], gid="g")}, base=4)
    turn = lambda v: RecordedTurn("d", GenerationResult("r", [7, 8], [-0.5, -0.25], [v, v], "stop"))
    partials = [PartialEpisode("g", 1, (turn(5), turn(7))), PartialEpisode("g", 2, (turn(8),)),
                PartialEpisode("g", 0, (turn(6),)),            # finished meanwhile: its trajectory wins
                PartialEpisode("other", 1, (turn(8),))]
    rec = group_record(g, partials)
    assert sorted(rec.partial) == [1, 2]
    back = restore_group(type(rec).model_validate_json(rec.model_dump_json()), old_base=4, new_base=10)
    assert back.prefixes[1][0].result.versions == [11, 11] and back.prefixes[1][1].result.token_ids == [7, 8]
    assert back.prefixes[1][0].result.logprobs == [-0.5, -0.25] and back.prefixes[2][0].context_digest == "d"
    # RL versions: sample 1's prefix starts at 1, sample 2's at 4; at version 5 with eta 2 the
    # first is past the bound (5 - 1 > 2) and restarts from scratch, the second is kept
    back.restart(version=5, max_staleness=2)
    assert sorted(back.prefixes) == [2] and back.admitted == 4
    back.restart(version=5, max_staleness=0)
    assert back.prefixes == {} and back.admitted == 5
