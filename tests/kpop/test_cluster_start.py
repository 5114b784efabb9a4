"""Start-up on a cluster fails fast and says why (kpop.runtime.placement, kpop.runtime.storage).

- what a cluster's nodes cannot hold is listed with the spec fields that ask for it (pure check
  over node records), and a label no node carries is named;
- `kpop run` against an address where nothing answers exits within a minute naming the address
  (Ray alone retries for minutes: benchmarks are not needed for that, the issue's bound is);
- on a real Ray instance: a spec asking for a GPU the instance lacks fails before any model is
  built; an actor the cluster has no room for fails the bounded wait naming its role, and one that
  has room but starts slowly is named as starting (raise the timeout); a local instance, the run's
  own, waits for its actors' processes past cluster.start_timeout_s; learner ranks
  the cluster has no room for fail their placement within the timeout; the storage check
  passes on a shared folder and names the node that lacks the starting model.
"""

import os
import socket
import subprocess
import sys
import time

import pytest

from kpop.runtime.placement import ClusterStartError, Demand, NodeInfo, host_port, problems, wait_placed
from kpop.spec import SpecError, load_spec, validate_spec

CPU_NODE = NodeInfo("a" * 56, "10.0.0.1", {"CPU": 8.0, "memory": 1e10}, {"kpop-role": "rollout"})
GPU_NODE = NodeInfo("b" * 56, "10.0.0.2", {"CPU": 16.0, "GPU": 2.0}, {"kpop-role": "train"})


def demands(ranks=1, rank_gpus=0.0, engines=1, engine_cpus=1.0, engine_gpus=0.0):
    return [Demand("learner rank", ranks, {"CPU": 1.0, "GPU": rank_gpus}, "learner.*"),
            Demand("engine", engines, {"CPU": engine_cpus, "GPU": engine_gpus}, "rollout.engine.*"),
            Demand("environment worker", 2, {}, "rollout.num_env_workers")]


def test_a_cluster_that_can_hold_the_run_has_no_problems():
    nodes = [CPU_NODE, GPU_NODE]
    assert problems(demands(ranks=2, rank_gpus=1.0, engines=4, engine_cpus=2.0), nodes, {}) == []
    assert problems(demands(), nodes, {"engine": {"kpop-role": "rollout"}, "learner": {"kpop-role": "train"}}) == []


def test_what_no_node_has_and_what_exceeds_the_totals_are_named_with_their_fields():
    found = problems(demands(ranks=2, rank_gpus=1.0, engines=2, engine_gpus=1.0), [CPU_NODE, GPU_NODE], {})
    assert found == ["GPU: the run asks for 4 (learner rank 2 x 1 + engine 2 x 1), the cluster has 2"]
    found = problems(demands(engines=1, engine_cpus=12.0), [CPU_NODE], {})
    assert found[0] == "each engine needs CPU 12, GPU 0 (rollout.engine.*); no node has that much"
    assert found[1].startswith("CPU: the run asks for 13 (learner rank 1 x 1 + engine 1 x 12), the cluster has 8")
    assert problems(demands(), [CPU_NODE], {"engine": {"kpop-role": "infer"}}) == [
        "cluster.placement.engine names label kpop-role=infer; no node has it"]


def test_addresses_resolve_to_host_and_port_or_are_left_to_ray():
    assert host_port("10.1.2.3:6379") == ("10.1.2.3", 6379)
    assert host_port("ray://head:10001") == ("head", 10001)
    assert host_port("auto") is None
    with pytest.raises(ClusterStartError, match="not host:port"):
        host_port("head")


def test_placement_needs_a_cluster_address():
    with pytest.raises(SpecError, match="cluster.placement names labelled nodes"):
        validate_spec({"cluster": {"placement": {"engine": {"kpop-role": "engine"}}}})
    with pytest.raises(SpecError, match="cluster.placement.engine"):
        validate_spec({"cluster": {"address": "auto", "placement": {"engine": {"bad key": "x"}}}})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kpop_run_against_an_address_where_nothing_answers_fails_within_a_minute(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "kpop.cli.main", "run", "--set", f"cluster.address={address}",
                          "--set", f"run_dir={tmp_path}"], env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert out.returncode != 0
    assert f"cluster.address '{address}': nothing answers at {address}" in out.stdout + out.stderr
    assert took < 60, took
    assert not (tmp_path / "init").exists()           # failed before building the model


def test_a_gpu_the_instance_lacks_fails_before_the_model_is_built(ray_session, tmp_path):
    from kpop.launch import run

    spec = load_spec(None, [f"run_dir={tmp_path}", "learner.num_gpus=1", "rollout.engine.num_gpus=0.5"])
    with pytest.raises(ClusterStartError) as info:
        run(spec)
    assert "GPU: the run asks for 1.5 (learner rank 1 x 1 + engine 1 x 0.5), the cluster has 0" in str(info.value)
    assert "each learner rank needs CPU 1, GPU 1 (learner.num_ranks, learner.num_cpus, learner.num_gpus)" in str(info.value)
    assert not (tmp_path / "init").exists()


def test_an_actor_the_cluster_has_no_room_for_fails_the_bounded_wait(ray_session):
    import ray

    @ray.remote(num_cpus=0, resources={"kpop_test_absent": 1})
    class Unplaceable:
        def ping(self) -> int:
            return 1

    actor = Unplaceable.remote()
    demand = Demand("engine", 1, {"kpop_test_absent": 1.0}, "rollout.engine.*")
    try:
        with pytest.raises(ClusterStartError, match=r"not placed within cluster.start_timeout_s = 2 s: 1 of 1 engine\(s\)") as info:
            wait_placed({"engine": (demand, [actor.ping.remote()])}, 2.0)
        assert "Other jobs may hold the resources" in str(info.value)
    finally:
        ray.kill(actor)


def test_an_actor_slow_to_start_where_there_is_room_is_named_as_starting(ray_session):
    import ray

    @ray.remote(num_cpus=0)
    class SlowStart:
        def __init__(self) -> None:
            time.sleep(30)           # what importing torch and vLLM costs on a loaded machine

        def ping(self) -> int:
            return 1

    actor = SlowStart.remote()
    try:
        with pytest.raises(ClusterStartError) as info:
            wait_placed({"environment worker": (Demand("environment worker", 1, {}, "rollout.num_env_workers"),
                                                [actor.ping.remote()])}, 2.0)
        assert "1 of 1 environment worker(s)" in str(info.value)
        assert ("The cluster has room for them: their processes are still starting. Starting a process (Python, torch, "
                "vLLM imports) can take a minute on a loaded node: raise cluster.start_timeout_s") in str(info.value)
    finally:
        ray.kill(actor)


def test_start_timeout_bounds_the_waits_on_a_cluster_only():
    from kpop.runtime.build import LOCAL_START_TIMEOUT_S, ray_start

    assert ray_start(load_spec(None, ["cluster.address=10.0.0.1:6379", "cluster.start_timeout_s=5"])).timeout_s == 5
    assert ray_start(load_spec(None, ["cluster.start_timeout_s=5"])).timeout_s == LOCAL_START_TIMEOUT_S == 1800
    assert ray_start(load_spec(None, ["cluster.start_timeout_s=3600"])).timeout_s == 3600


def test_a_local_run_waits_for_its_actors_past_start_timeout_s(ray_session, tiny_llama_dir, tmp_path):
    """Starting the learner rank and the workers' processes takes seconds at least (a minute on a
    busy machine): a local run with a 1 s start_timeout_s still gets them all."""
    from kpop.launch import launch_actors
    from kpop.runtime.build import runtime_config

    spec = load_spec(None, [f"run_dir={tmp_path}", "cluster.start_timeout_s=1", "rollout.engine.type=builtin",
                            "rollout.num_env_workers=2", "model.hidden_size=64", "model.intermediate_size=128",
                            "model.num_heads=2", "model.num_kv_heads=1"])
    t0 = time.monotonic()
    engines, workers, learner, starting = launch_actors(spec, tiny_llama_dir, runtime_config(spec, tiny_llama_dir))
    took = time.monotonic() - t0
    try:
        assert ray_session.get([w.ping.remote() for w in workers], timeout=60) == [0, 1]
        assert took > 1, took                # longer than the cluster bound would have allowed
    finally:
        for handle in [*engines, *workers, learner]:
            ray_session.kill(handle)


def test_learner_ranks_the_cluster_has_no_room_for_fail_within_the_timeout(ray_session, tiny_llama_dir):
    from kpop.learner.group import LearnerGroup
    from kpop.spec.learner import LearnerSpec

    group = LearnerGroup.create(str(tiny_llama_dir), LearnerSpec(num_cpus=64), place_timeout_s=2.0)
    with pytest.raises(TimeoutError, match=r"1 of 1 learner ranks \(each CPU 64, GPU 0\) not placed within 2 s"):
        ray_session.get(group.ready.remote(), timeout=600)


def test_the_storage_check_passes_on_a_shared_folder_and_names_a_node_without_the_model(ray_session, tmp_path, tiny_llama_dir):
    from kpop.runtime.placement import alive_nodes
    from kpop.runtime.storage import CHECK_DIR, check_storage

    nodes = alive_nodes()
    check_storage(tmp_path, tiny_llama_dir, nodes, 60)
    assert not (tmp_path / CHECK_DIR).exists()            # cleaned up
    with pytest.raises(ClusterStartError) as info:
        check_storage(tmp_path, tmp_path / "missing", nodes, 60)
    assert f"node {nodes[0].address} ({nodes[0].node_id[:12]}): the starting model {tmp_path / 'missing'} is not there" in str(info.value)
