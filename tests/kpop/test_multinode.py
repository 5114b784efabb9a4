"""`kpop run` on a real three-node Ray cluster started on this machine (tests/kpop/ray_cluster.py).

The head (label kpop-role=learner) runs the driver and the learner, node `engine` the engine and
node `env` the environment workers, as cluster.placement asks; the actors' node ids (the GCS
actor records) show it. Once the first RL step is recorded (the next step's rollouts are then in
flight), one node is killed outright (its raylet, its actors and what they spawned), in one case
the engine's (the engine actor and its vLLM process: the run starts a replacement on a remaining
node, which loads the starting folder from the shared run_dir and then the learner's current
weights by broadcast), in the other the environment workers' (their episodes in flight die with
them: replacement workers start on a remaining node and run those episodes again from scratch).
Either way the run finishes every step, each with all its episodes and within the staleness bound;
every drawn task is trained exactly once or still buffered. A second case shows the storage rule:
a node that does not see run_dir (a private mount namespace hides it) stops the run at start-up,
naming the node and the folder. The test stops only the nodes it started.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from kpop.metrics import read_metrics
from tests.kpop.ray_cluster import ENV, PLACEMENT_QUERY, LocalCluster

TINY = ["model.hidden_size=64", "model.intermediate_size=128", "model.num_heads=2", "model.num_kv_heads=1",
        "logging.progress=lines", "sft.steps=2", "sft.num_examples=8", "sft.batch_size=4", "train.eval_tasks=2",
        "scheduler.type=kpop", "scheduler.max_staleness=1", "rollout.group_size=2", "train.tasks_per_step=2",
        "train.steps=4", "rollout.num_env_workers=2", "scheduler.max_retries=5", "rollout.max_total_tokens=512",
        "cluster.start_timeout_s=600"]  # this machine is shared: starting an actor process alone can take a minute
SFT_DRAWS = 8
PLACE = ["cluster.placement.learner={kpop-role: learner}", "cluster.placement.engine={kpop-role: engine}",
         "cluster.placement.env_worker={kpop-role: env}"]


@pytest.fixture
def cluster(tmp_path):
    temp = Path(f"/tmp/kpmn_{uuid.uuid4().hex[:8]}")   # short: Ray's socket paths live under it
    temp.mkdir()
    c = LocalCluster(temp)
    try:
        c.start_head({"kpop-role": "learner"}, num_cpus=2)
        yield c
    finally:
        c.teardown()
        # the nodes' logs (actors' stdout and stderr included) outlive the cluster, for a failure
        if (temp / "session_latest" / "logs").is_dir():
            shutil.copytree(temp / "session_latest" / "logs", tmp_path / "ray_logs", ignore_dangling_symlinks=True,
                            dirs_exist_ok=True)
        shutil.rmtree(temp, ignore_errors=True)


def kpop_run(run_dir: Path, address: str, extra: list[str]) -> subprocess.Popen:
    sets = [a for kv in [*TINY, *extra, f"cluster.address={address}", f"run_dir={run_dir}"] for a in ("--set", kv)]
    return subprocess.Popen([sys.executable, "-m", "kpop.cli.main", "run", *sets], env=ENV, text=True,
                            stdout=(run_dir.parent / f"{run_dir.name}.log").open("w"), stderr=subprocess.STDOUT)


def stopped(proc: subprocess.Popen, log: Path) -> str:
    """The tail of a run's log, with its driver's Python stacks if it still runs (then it is killed)."""
    stacks = ""
    if proc.poll() is None:
        spy = Path(sys.executable).parent / "py-spy"
        stacks = subprocess.run([str(spy), "dump", "--pid", str(proc.pid)], capture_output=True, text=True,
                                timeout=120).stdout
        proc.kill()
        proc.wait()
    return log.read_text()[-4000:] + "\n" + stacks


def rl_steps(run_dir: Path) -> list[int]:
    try:
        return [r["step"] for r in read_metrics(run_dir) if r["phase"] == "rl"]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def node_of(placement: dict, role: str) -> str:
    return next(nid for nid, n in placement["nodes"].items() if n["labels"].get("kpop-role") == role)


@pytest.mark.slow
@pytest.mark.parametrize("lost", ["engine", "env"])
def test_run_places_roles_on_their_nodes_and_survives_losing_a_node(cluster, tmp_path, lost):
    nodes = {"engine": cluster.add_node("engine", {"kpop-role": "engine"}, num_cpus=2),
             "env": cluster.add_node("env", {"kpop-role": "env"}, num_cpus=2)}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    t0 = time.monotonic()
    proc = kpop_run(run_dir, cluster.address, PLACE)
    deadline = time.monotonic() + 1500
    while not rl_steps(run_dir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    log = run_dir.parent / "run.log"
    assert rl_steps(run_dir), stopped(proc, log)
    killed_after = max(rl_steps(run_dir))
    cluster.kill_node(nodes[lost])                     # step killed_after + 1 is generating
    try:
        assert proc.wait(timeout=1500) == 0, log.read_text()[-4000:]
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run did not end within 1500 s of losing the {lost} node:\n{stopped(proc, log)}")
    wall_s = time.monotonic() - t0

    placement = cluster.query(PLACEMENT_QUERY)
    learner_n, engine_n, env_n = (node_of(placement, r) for r in ("learner", "engine", "env"))
    assert len({learner_n, engine_n, env_n}) == 3
    role_node = {"engine": engine_n, "env": env_n}
    assert {r: placement["nodes"][n]["alive"] for r, n in role_node.items()} == {r: r != lost for r in role_node}
    where = {}
    for a in placement["actors"]:
        where.setdefault(a["cls"], []).append(a["node"])
    assert set(where["RankWorker"]) == set(where["LearnerGroup"]) == {learner_n}
    assert set(where["_EngineRouter"]) == {learner_n}   # the router lives on the driver's node
    # The lost role's actors ran on their node first; so may a replacement started before Ray
    # declared that node dead (it dies unstarted and is retried); the ones that finished the run
    # ran elsewhere. The other role's actors never moved.
    count = {"engine": 1, "env": 2}
    lost_cls, kept = {"engine": ("_EngineActor", "env"), "env": ("EnvWorker", "engine")}[lost]
    replaced = [n for n in where[lost_cls] if n != role_node[lost]]
    assert where[lost_cls].count(role_node[lost]) >= count[lost]
    assert replaced and set(replaced) <= {learner_n, role_node[kept]}
    assert where[{"engine": "_EngineActor", "env": "EnvWorker"}[kept]] == [role_node[kept]] * count[kept]

    rl = [r for r in read_metrics(run_dir) if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2, 3, 4] and killed_after < 4
    restarts = {"engine": "engine_restarts", "env": "worker_restarts"}
    assert rl[-1][restarts[lost]] >= 1 and all(r[restarts[kept]] == 0 for r in rl)
    assert [r["rl_version"] for r in rl] == [1, 2, 3, 4]
    assert all(r["episodes"] == 4 and r["staleness_max"] <= 1 for r in rl)
    ledger = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    state = json.loads((run_dir / "checkpoints" / "last" / "scheduler_state.json").read_text())
    trained = [i for line in ledger for i in line["indices"]]
    left = [g["index"] for g in state["ready"] + state["pending"]]
    assert [line["step"] for line in ledger] == [1, 2, 3, 4]
    assert len(trained) == len(set(trained)) == 8 and not set(trained) & set(left)
    assert sorted(trained + left) == list(range(SFT_DRAWS, state["sampler_position"]))
    print(f"\nmulti-node run: wall {wall_s:.0f} s, {lost} node killed after step {killed_after}, "
          f"{restarts[lost]} {rl[-1][restarts[lost]]:g}")


@pytest.mark.slow
def test_a_node_that_does_not_see_run_dir_stops_the_run_at_start_naming_it(cluster, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    # The node runs in its own mount namespace where an empty tmpfs hides `shared`: its run_dir is
    # a different, local folder at the same path (what a node without the shared mount sees).
    hide = f"mount -t tmpfs none {shared} && exec \"$@\""
    cluster.add_node("private", {"kpop-role": "private"}, num_cpus=1,
                     prefix=("unshare", "--mount", "--propagation", "private", "sh", "-c", hide, "sh"))
    run_dir = shared / "run"
    run_dir.mkdir()
    t0 = time.monotonic()
    proc = kpop_run(run_dir, cluster.address, [])
    try:
        assert proc.wait(timeout=900) != 0
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run did not stop within 900 s:\n{stopped(proc, shared / 'run.log')}")
    out = (shared / "run.log").read_text()
    assert f"run_dir {run_dir} must be one folder that every node of the cluster sees" in out, out[-3000:]
    assert "cannot read" in out and str(run_dir / ".storage_check" / "token") in out
    print(f"\nstorage check failed the run in {time.monotonic() - t0:.0f} s (model build included)")
    assert os.path.isdir(run_dir / "init") and not (run_dir / "checkpoints").exists()
