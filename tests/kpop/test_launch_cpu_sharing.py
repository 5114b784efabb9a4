"""CPU sharing defaults (kpop.launch.learner_threads, kpop.runtime.build.rollout_nice), hand-computed."""

from kpop.launch import learner_threads
from kpop.runtime import runtime_config
from kpop.runtime.build import overlaps, rollout_nice
from kpop.spec import load_spec


def spec(*overrides):
    return load_spec(None, list(overrides))


def test_synchronous_runs_give_the_learner_every_core_per_rank():
    assert learner_threads(spec(), cores=8) == 8
    assert learner_threads(spec("learner.num_ranks=2"), cores=8) == 4
    # eta = 0 alternates generation and training like the synchronous loop
    assert not overlaps(spec("scheduler.type=kpop", "scheduler.max_staleness=0"))
    assert not overlaps(spec())


def test_overlapped_rl_steps_leave_the_engines_their_cores():
    kpop = spec("scheduler.type=kpop", "scheduler.max_staleness=2")
    assert overlaps(kpop)
    assert learner_threads(kpop, cores=8, overlapped=True) == 7
    assert learner_threads(kpop, cores=8) == 8            # the cold start overlaps nothing
    two = spec("scheduler.type=kpop", "scheduler.max_staleness=1", "rollout.engine.num_engines=2",
               "rollout.engine.num_cpus=2", "learner.num_ranks=2")
    assert learner_threads(two, cores=8, overlapped=True) == 2
    assert learner_threads(kpop, cores=1, overlapped=True) == 1


def test_an_explicit_setting_wins():
    assert learner_threads(spec("scheduler.type=kpop", "learner.threads=3"), cores=2, overlapped=True) == 3


def test_generation_yields_the_cpu_only_when_kpop_overlaps_on_cpu_engines():
    assert rollout_nice(spec()) == 0
    assert rollout_nice(spec("scheduler.type=kpop", "scheduler.max_staleness=0")) == 0
    assert rollout_nice(spec("scheduler.type=kpop", "scheduler.max_staleness=2")) == 10
    assert rollout_nice(spec("scheduler.type=kpop", "rollout.engine.num_gpus=1")) == 0
    assert rollout_nice(spec("scheduler.type=kpop", "rollout.nice=3")) == 3
    # ... and the engine and worker processes a run starts are given that niceness
    runtime = runtime_config(spec("scheduler.type=kpop", "scheduler.max_staleness=2"), "/m")
    assert [e.nice for e in runtime.engines] == [w.nice for w in runtime.workers] == [10]


YIELD_PROBE = """
import os, threading
from kpop.rollout.niceness import yield_cpu
def prio(tid): return os.getpriority(os.PRIO_PROCESS, tid)
go, done = threading.Event(), threading.Event()
seen = {}
t = threading.Thread(target=lambda: (go.wait(), seen.update(early=prio(0)), done.set())); t.start()
yield_cpu(5)
go.set(); done.wait()
yield_cpu(2)                                           # never raises a priority back
later = threading.Thread(target=lambda: seen.update(later=prio(0))); later.start(); later.join()
print(seen["early"], prio(0), seen["later"])
"""


def test_yield_cpu_lowers_threads_started_before_and_after_it():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", YIELD_PROBE], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["5", "5", "5"]   # os.nice would have left the early thread at 0


def test_ray_workers_start_at_the_drivers_priority(ray_session):
    import os

    @ray_session.remote
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, 0)

    # Ray's default is 15: the learner would then share the cores evenly with generation
    assert ray_session.get(niceness.remote()) == os.getpriority(os.PRIO_PROCESS, 0)
