"""KPop runs through the real actors (vLLM engine, environment workers, DeepSpeed learner).

- eta = 0 behaves synchronously: every trained token is from the current version, nothing is in
  flight when a step fires, and step k trains exactly the k-th block of B draws; no run draws a
  task past its last step (the draw horizon); the group-level dynamic_length term is applied to
  the complete groups of each batch and logged;
- eta = 1 with an environment worker and the engine killed mid-run (SIGKILL of their processes),
  two environment families (calculator, search) and the DPR curriculum on: both actors are replaced, no
  trained token is older than the bound, both families are trained, the curriculum records
  pass rates, and every drawn task is trained, buffered or pending exactly once (tasks in =
  trajectories out);
- two engine replicas with tail migration: requests are moved off the busier replica mid-generation
  and finished on the other (resumed from their prefix), and the run still bounds staleness and
  accounts for every task;
- distillation and preference rounds between KPop steps: they run in order, the first step after a
  round trains only tokens of the policy it left (staleness 0), and each stretch of RL draws
  exactly its steps' groups.
"""

import json
import os
import signal
import threading
import time

import pytest

from kpop.metrics import read_metrics
from kpop.spec import load_spec

TINY = ["model.hidden_size=64", "model.intermediate_size=128", "model.num_heads=2", "model.num_kv_heads=1",
        "logging.progress=lines", "sft.steps=2", "sft.num_examples=8", "sft.batch_size=4", "train.eval_tasks=2",
        "scheduler.type=kpop", "rollout.group_size=2", "train.tasks_per_step=2"]
SFT_DRAWS = 8  # the cold start draws sft.num_examples tasks first


def ledger(run_dir):
    return [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]


def final_state(run_dir):
    return json.loads((run_dir / "checkpoints" / "last" / "scheduler_state.json").read_text())


def assert_every_task_accounted(run_dir, group_size):
    """Each draw index is trained once, or left ready/pending in the last checkpoint; none missing."""
    trained = [i for line in ledger(run_dir) for i in line["indices"]]
    state = final_state(run_dir)
    left = [g["index"] for g in state["ready"] + state["pending"]]
    assert len(trained) == len(set(trained)) and not set(trained) & set(left)
    assert sorted(trained + left) == list(range(SFT_DRAWS, state["sampler_position"]))
    assert all(len(g["trajs"]) == group_size for g in state["ready"])


def rl_records(run_dir):
    return [r for r in read_metrics(run_dir) if r["phase"] == "rl"]


@pytest.mark.slow
def test_eta_zero_is_synchronous(ray_session, tmp_path):
    from kpop.launch import run

    spec = load_spec(None, [*TINY, "train.steps=3", "scheduler.max_staleness=0", f"run_dir={tmp_path}",
                            "envs.0.rewards=[{type: dynamic_length, alpha: 0.1}]"])
    run(spec)
    rl = rl_records(tmp_path)
    assert [r["step"] for r in rl] == [1, 2, 3]
    assert all(abs(r["reward/shape/dynamic_length"]) <= 0.05 for r in rl)
    for r in rl:
        assert r["staleness_max"] == 0 and r["staleness_hist"][0] == pytest.approx(r["gen_tokens"] * r["episodes"])
        assert sum(r["staleness_hist"]) == r["staleness_hist"][0] > 0
        assert r["in_flight"] == 0 and r["paused"] == 0 and r["resumed"] == 0 and r["episodes"] == 4
    # step k trains exactly the k-th block of B = 2 draws, as the synchronous loop would
    assert [sorted(line["indices"]) for line in ledger(tmp_path)] == [[8, 9], [10, 11], [12, 13]]
    assert_every_task_accounted(tmp_path, 2)
    assert final_state(tmp_path)["sampler_position"] == SFT_DRAWS + 3 * 2   # nothing drawn past the last step


def kill_actor_process(class_name: str) -> int:
    """SIGKILL the process of a live actor of this class in this session (the GCS actor table;
    the state API would need the dashboard, which the test session does not start)."""
    from ray._private.state import actors

    alive = [a for a in actors().values() if a["ActorClassName"] == class_name and a["State"] == "ALIVE"]
    assert alive, f"no live {class_name}"
    os.kill(alive[0]["Pid"], signal.SIGKILL)
    return alive[0]["Pid"]


@pytest.mark.slow
def test_eta_one_bounds_staleness_and_survives_worker_and_engine_death(ray_session, tmp_path):
    from kpop.launch import run

    spec = load_spec(None, [*TINY, "train.steps=6", "scheduler.max_staleness=1", "rollout.num_env_workers=2",
                            "scheduler.max_retries=5", f"run_dir={tmp_path}", "scheduler.dpr.enabled=true",
                            "envs=[{name: calculator, weight: 1.0}, {name: search, weight: 1.0}]",
                            "rollout.max_total_tokens=512"])
    killed, errors = [], []

    def chaos():
        try:
            deadline = time.time() + 900
            while not any(r["step"] >= 1 for r in rl_records(tmp_path)) and time.time() < deadline:
                time.sleep(0.2)
            killed.append(kill_actor_process("EnvWorker"))       # mid-run: rollouts are in flight
            while not any(r["step"] >= 2 for r in rl_records(tmp_path)) and time.time() < deadline:
                time.sleep(0.2)
            killed.append(kill_actor_process("_EngineActor"))
        except Exception as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    thread = threading.Thread(target=chaos, daemon=True)
    thread.start()
    run(spec)
    thread.join(timeout=10)
    assert not errors and len(killed) == 2
    rl = rl_records(tmp_path)
    assert [r["step"] for r in rl] == [1, 2, 3, 4, 5, 6]
    for r in rl:
        assert r["staleness_max"] <= 1 and len(r["staleness_hist"]) <= 2 and r["episodes"] == 4
    last = rl[-1]
    assert last["worker_restarts"] >= 1 and last["engine_restarts"] >= 1
    assert sum(r["paused"] for r in rl) > 0                                  # rollouts spanned updates
    assert_every_task_accounted(tmp_path, 2)
    assert final_state(tmp_path)["sampler_position"] == SFT_DRAWS + 6 * 2   # the draw horizon held
    families = {k.split("/", 1)[1] for r in rl for k in r if k.startswith("episodes/") and r[k] > 0}
    assert families == {"calculator", "search"}
    assert all(r["gen_tokens"] > 0 for r in rl)                         # every batch was generated
    trained_tasks = {gid.rsplit(":", 1)[0] for line in ledger(tmp_path) for gid in line["group_ids"]}
    assert last["dpr_tasks"] >= len(trained_tasks) > 0   # a pass-rate history for every trained task


@pytest.mark.slow
def test_two_engines_migrate_tail_requests_and_account_for_every_task(ray_session, tmp_path):
    from kpop.launch import run

    spec = load_spec(None, [*TINY, "train.steps=4", "scheduler.max_staleness=1", "rollout.engine.num_engines=2",
                            "rollout.group_size=4", "train.tasks_per_step=4", "rollout.num_env_workers=2",
                            "scheduler.tail_min_age_s=0.0", "scheduler.tail_check_s=0.05",
                            f"run_dir={tmp_path}"])
    run(spec)
    rl = rl_records(tmp_path)
    assert [r["step"] for r in rl] == [1, 2, 3, 4]
    assert rl[-1]["migrated"] >= rl[-1]["moved"] > 0       # turns really continued on the other replica
    for r in rl:
        assert r["staleness_max"] <= 1 and r["episodes"] == 16 and r["gen_tokens"] > 0
    assert_every_task_accounted(tmp_path, 4)


@pytest.mark.slow
def test_rounds_run_between_kpop_steps_and_train_nothing_generated_before_them(ray_session, tmp_path):
    from kpop.launch import run

    spec = load_spec(None, [*TINY, "train.steps=4", "scheduler.max_staleness=2", f"run_dir={tmp_path}",
                            "envs=[{name: calculator}, {name: instructions}]",
                            "learner.distill.every=2", "learner.distill.steps=1", "learner.distill.tasks=2",
                            "learner.preference.every=3", "learner.preference.steps=1", "learner.preference.tasks=2"])
    run(spec)
    records = [r for r in read_metrics(tmp_path) if r["phase"] in ("rl", "distill", "preference")]
    assert [(r["phase"], r["step"]) for r in records] == [
        ("rl", 1), ("rl", 2), ("distill", 1), ("rl", 3), ("preference", 1), ("rl", 4), ("distill", 2)]
    versions = [r["version"] for r in records]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    # the first RL step after a round trains only tokens of the policy the round left
    rl = {r["step"]: r for r in records if r["phase"] == "rl"}
    assert rl[3]["staleness_max"] == 0 and rl[4]["staleness_max"] == 0
    assert all(r["staleness_max"] <= 2 for r in rl.values())
    assert_every_task_accounted(tmp_path, 2)
    # each stretch of RL drew exactly its steps' groups: nothing drawn was thrown away by a round
    assert final_state(tmp_path)["sampler_position"] == SFT_DRAWS + 4 * 2
    assert [line["step"] for line in ledger(tmp_path)] == [1, 2, 3, 4]
