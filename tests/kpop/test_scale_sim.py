"""kpop.scheduler.sim (benchmarks/scale_sim.py): hand-computed engines and runs, the staleness bound,
the ledger, and that the simulation's decisions are the real policy modules'."""

from __future__ import annotations

import pytest

import kpop.scheduler.sim.cluster as sim_cluster
from kpop.scheduler import tail
from kpop.scheduler.buffer import GroupBuffer
from kpop.scheduler.dpr import DynamicPassRating
from kpop.scheduler.sim.clock import Clock
from kpop.scheduler.sim.cluster import Cluster, LoadIndex
from kpop.scheduler.sim.decode import DecodeCurve
from kpop.scheduler.sim.kpop_loop import KPopLoop
from kpop.scheduler.sim.run import SimSetup
from kpop.scheduler.sim.sync_loop import SyncLoop
from kpop.scheduler.sim.workload import ParetoTail, StepLatency, Workload
from kpop.scheduler.staleness import StalenessManager
from kpop.spec.run import DPRSpec, KPopSchedulerSpec

FLAT = DecodeCurve(base_s=0.01, per_seq_s=0.0)   # 10 ms per token whatever the batch
NO_WAIT = StepLatency(((1.0, 0.0, 0.0),))
TAILED = StepLatency(((0.2, 1.5, 4.0), (0.8, 0.05, 0.3)), ParetoTail(0.05, 4.0, 1.5, 10.0))


def spec(eta: int, max_concurrent: int = 64, **kw) -> KPopSchedulerSpec:
    return KPopSchedulerSpec(max_staleness=eta, max_concurrent=max_concurrent, dpr=DPRSpec(enabled=False), **kw)


def setup(workload: Workload, engines: int = 1, steps: int = 6, groups: int = 4, **kw) -> SimSetup:
    return SimSetup(engines=engines, steps=steps, batch_groups=groups, group_size=4, workload=workload,
                    decode=kw.pop("decode", FLAT), learner_s=kw.pop("learner_s", 0.5),
                    publish_s=kw.pop("publish_s", 0.1), **kw)


def two_turns(latency: StepLatency = NO_WAIT) -> Workload:
    """Every episode: a 20-token tool call, then a right 5-token answer."""
    return Workload(latency, call_tokens=20, answer_tokens=5, success=1.0, target_turns=((1, 1.0),))


def test_decode_fit_recovers_a_linear_step_time():
    curve = DecodeCurve(0.0138, 0.00097)
    fit = DecodeCurve.fit(tuple((b, curve.tokens_per_s(b)) for b in (1, 16, 64)))
    assert fit.base_s == pytest.approx(0.0138) and fit.per_seq_s == pytest.approx(0.00097)
    assert DecodeCurve(0.01, 0.005).tokens_per_s(2) == pytest.approx(100.0)


def test_engine_is_processor_sharing_with_hand_computed_finish_times():
    # tau(1) = 15 ms, tau(2) = 20 ms: A (10 tokens) and B (20) share steps of 20 ms until A is done
    # at 10 * 20 ms = 0.2 s; B's last 10 tokens then take 10 * 15 ms: done at 0.35 s.
    clock = Clock()
    cluster = Cluster(clock, 1, DecodeCurve(0.01, 0.005), max_seqs=8)
    done = {}
    for name, n in (("A", 10), ("B", 20)):
        cluster.generate(n, 0, lambda req, name=name: done.setdefault(name, (clock.now, dict(req.versions))), engine=0)
    clock.run(lambda: len(done) == 2)
    assert done["A"][0] == pytest.approx(0.2) and done["B"][0] == pytest.approx(0.35)
    assert done["B"][1] == pytest.approx({0: 20.0})
    assert cluster.engines[0].busy_until(clock.now) == pytest.approx(0.35)


def test_waiting_requests_start_by_priority_and_tokens_split_by_version():
    clock = Clock()
    cluster = Cluster(clock, 1, FLAT, max_seqs=1)
    order, versions = [], {}

    def done(req):
        order.append(req.priority)
        versions[req.priority] = req.versions

    for prio in (5, 1, 3):
        cluster.generate(10, prio, done, engine=0)
    # priority 5 started first (the engine was free); at 0.05 s, 5 tokens in, a weight update
    clock.at(0.05, cluster.pause)
    clock.at(0.15, cluster.publish, 1)   # paused 0.1 s: nothing advances
    clock.run(lambda: len(order) == 3)
    assert order == [5, 1, 3]
    assert versions[5] == pytest.approx({0: 5.0, 1: 5.0}) and versions[1] == pytest.approx({1: 10.0})
    assert clock.now == pytest.approx(0.1 + 0.3)


def test_request_cost_stalls_decoding_serially_and_is_paid_again_after_a_move():
    # two requests arrive at 0: decoding waits 2 x 50 ms of request handling, then 10 tokens each
    clock = Clock()
    cluster = Cluster(clock, 1, DecodeCurve(0.01, 0.0, request_s=0.05), max_seqs=8)
    done = []
    for _ in range(2):
        cluster.generate(10, 0, lambda req: done.append((clock.now, dict(req.versions))), engine=0)
    clock.at(0.03, cluster.pause)          # a weight update during the stall: every token is version 1
    clock.at(0.03, cluster.publish, 1)
    clock.run(lambda: len(done) == 2)
    assert done == [(pytest.approx(0.2), pytest.approx({1: 10.0}))] * 2


def test_load_index_places_like_the_router_and_migration_asks_choose_migrations(monkeypatch):
    index = LoadIndex(3)
    index.update(0, 2)
    assert index.idlest() == 1 and index.idlest(exclude=1) == 2 and index.busiest() == 0
    calls = []
    monkeypatch.setattr(sim_cluster, "choose_migrations",
                        lambda *a: calls.append(a) or tail.choose_migrations(*a))
    clock = Clock()
    cluster = Cluster(clock, 2, FLAT, max_seqs=8)
    finished = []
    for n in (100, 100, 100, 100):
        cluster.generate(n, 0, lambda req: finished.append(sum(req.versions.values())), engine=0)
    clock.at(0.5, lambda: cluster.migrate_tail(min_age_s=0.2, max_moves=4))
    clock.run(lambda: len(finished) == 4)
    # gap 4 - 0: the policy moves 4 // 2 = 2 requests; each finishes with all its 100 tokens
    assert len(calls) == 1 and cluster.migrated == cluster.moved == 2
    assert finished == pytest.approx([100.0] * 4)
    # 50 tokens each before the move, the rest at two per engine: 0.5 s + 50 x 10 ms
    assert clock.now == pytest.approx(1.0)
    # with 10 ms per request, the moved ones pay it again on the idle engine: 4 x 10 ms of stalls,
    # 46 tokens each by 0.5 s, then 54 more (the moved after another 2 x 10 ms)
    clock = Clock()
    cluster = Cluster(clock, 2, DecodeCurve(0.01, 0.0, request_s=0.01), max_seqs=8)
    ends = []
    for _ in range(4):
        cluster.generate(100, 0, lambda req: ends.append(clock.now), engine=0)
    clock.at(0.5, lambda: cluster.migrate_tail(min_age_s=0.2, max_moves=4))
    clock.run(lambda: len(ends) == 4)
    assert sorted(ends) == pytest.approx([1.04, 1.04, 1.06, 1.06])


@pytest.mark.parametrize("engines", [1, 3])
def test_zero_latency_flat_decode_eta_zero_equals_the_hand_computed_wall_clock(engines):
    s = setup(two_turns(), engines=engines)
    expected = s.steps * ((20 + 5) * 0.01 + s.learner_s + s.publish_s)
    sync = SyncLoop(s).run()
    kpop = KPopLoop(s, spec(eta=0)).run()
    assert sync.wall_s == pytest.approx(expected) and kpop.wall_s == pytest.approx(expected)
    assert sync.staleness_hist == pytest.approx([s.steps * s.batch_groups * 4 * 25.0])
    # the engines decode 0.25 s of every 0.85 s step
    assert sync.engine_idle == pytest.approx(1 - 0.25 / 0.85)


def test_overlap_hides_generation_behind_the_learner():
    # eta 1: after the first batch every step's generation runs during the previous learner step
    s = setup(two_turns(), steps=8, learner_s=1.0, publish_s=0.0)
    kpop = KPopLoop(s, spec(eta=1)).run()
    assert kpop.wall_s == pytest.approx(0.25 + 8 * 1.0)
    assert SyncLoop(s).run().wall_s == pytest.approx(8 * 1.25)


@pytest.mark.parametrize("eta,max_concurrent", [(1, 8), (2, 64), (4, 12)])
def test_staleness_bound_holds_and_every_draw_is_trained_once(eta, max_concurrent):
    work = Workload(TAILED, call_tokens=20, answer_tokens=5, success=0.5, concentration=2.0,
                    long_turns=ParetoTail(0.05, 64.0, 1.2, 512.0))
    s = setup(work, engines=3, steps=10, learner_s=0.3, decode=DecodeCurve(0.0138, 0.00097))
    kpop = KPopLoop(s, spec(eta, max_concurrent)).run()
    assert kpop.staleness_max <= eta and len(kpop.staleness_hist) <= eta + 1
    assert kpop.staleness_mean > 0
    sync = SyncLoop(s).run()
    for result in (kpop, sync):
        assert sorted(result.trained) == list(range(s.steps * s.batch_groups))
        assert result.samples == s.steps * s.batch_groups * 4


def test_admission_is_the_real_staleness_manager(monkeypatch):
    # Cap the real capacity at one group: the simulation then never has two groups in flight.
    capacity = StalenessManager.capacity
    seen = []

    def one_at_a_time(self):
        seen.append(self.running)
        return min(capacity(self), 1 - self.running)

    monkeypatch.setattr(StalenessManager, "capacity", one_at_a_time)
    s = setup(two_turns(), steps=3)
    kpop = KPopLoop(s, spec(eta=2)).run()
    assert seen and max(seen) <= 1
    # one group at a time: 12 groups of 0.25 s each, plus the learner steps that nothing overlaps
    assert kpop.wall_s >= 12 * 0.25


def test_due_rule_dpr_and_buffer_are_the_real_modules(monkeypatch):
    due_calls, dpr_calls = [], []
    due, record = GroupBuffer.due, DynamicPassRating.record
    monkeypatch.setattr(GroupBuffer, "due", lambda self, v, eta: due_calls.append(v) or due(self, v, eta))
    monkeypatch.setattr(DynamicPassRating, "record", lambda self, *a: dpr_calls.append(a) or record(self, *a))
    s = setup(Workload(TAILED, 20, 5, 0.5, concentration=2.0), engines=2, steps=5)
    loop = KPopLoop(s, KPopSchedulerSpec(max_staleness=1, max_concurrent=16, dpr=DPRSpec(revisit_prob=0.5)))
    result = loop.run()
    assert due_calls and len(dpr_calls) == s.steps * s.batch_groups
    assert sorted(result.trained) == list(range(s.steps * s.batch_groups))
    assert isinstance(loop.buffer, GroupBuffer) and loop.sampler.curriculum is loop.dpr


def test_benchmark_workload_matches_the_async_benchmark_tasks():
    import random

    work = Workload(StepLatency(((0.2, 1.5, 4.0), (0.8, 0.05, 0.3))), 20, 5, 0.55)
    for seed in (7, 123456):
        plan = work.plans(seed, 0, 1)[0]
        for k, got in enumerate(plan.latency_s):  # benchmarks/async_speedup.py, SlowCalculator.astep
            r = random.Random(f"{seed}/{k}")
            assert got == (r.uniform(1.5, 4.0) if r.random() < 0.2 else r.uniform(0.05, 0.3))
        target = random.Random(seed).choices([1, 2, 3, 6], weights=[6, 2, 1, 1])[0]
        assert len(plan.tokens) <= max(2, target)


def test_a_run_with_tail_migration_repeats_exactly():
    # Migration breaks ties of age by the engines' request order, which must not be the order of
    # their sets (identity hashes: a rerun moved 64 requests instead of 59 at 64 engines).
    work = Workload(TAILED, call_tokens=20, answer_tokens=5, success=0.5, long_turns=ParetoTail(0.2, 64.0, 1.2, 512.0))
    s = setup(work, engines=8, steps=6, learner_s=0.3, decode=DecodeCurve(0.0138, 0.00097, request_s=0.02))
    runs = [KPopLoop(s, spec(4, 40, tail_migration=True, tail_min_age_s=0.0)).run() for _ in range(4)]
    assert runs[0].moved > 0
    assert {(r.wall_s, r.moved, r.staleness_mean) for r in runs} == {(runs[0].wall_s, runs[0].moved, runs[0].staleness_mean)}
