"""The Ray actors of a run, started from their runtime configuration (kpop.runtime.config).

`start_engine` and `start_worker` are what `kpop run` starts and what the KPop scheduler calls to
replace an actor that died: a replacement gets the configuration of the actor it replaces. Neither
waits for the actor to be ready (an engine builds on `start()` or its first call).

Placement: an engine or worker given node labels (cluster.placement) goes to a node with those
labels when one has room, else to any node with its resources: a replacement for an actor lost
with its node then starts on a remaining node instead of waiting for a labelled one. The run's
control-plane actors (the engine router) go on the driver's node (`on_driver_node`): losing any
other node must not take them along, and losing the driver's node ends the run anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kpop.rollout.env_worker import WorkerConfig
    from kpop.runtime.config import EngineLaunch


def start_engine(launch: EngineLaunch) -> Any:
    from kpop.rollout.builtin_engine import BuiltinEngineConfig

    options = {"num_cpus": launch.num_cpus, "num_gpus": launch.num_gpus, **preferring(launch.labels)}
    if isinstance(launch.config, BuiltinEngineConfig):
        from kpop.rollout.builtin_actor import BuiltinEngineActor

        # torch threads = the CPUs the actor reserves (at least one)
        threads = max(1, int(launch.num_cpus))
        return BuiltinEngineActor.options(**options).remote(launch.config, num_threads=threads, nice=launch.nice)
    from kpop.rollout.engine_actor import EngineActor

    return EngineActor.options(**options).remote(launch.config, nice=launch.nice)


def start_worker(config: WorkerConfig, labels: Mapping[str, str] | None = None) -> Any:
    import ray

    from kpop.rollout.env_worker import EnvWorker

    # Workers reserve no CPU: they wait on engines and sandboxes, and an actor that reserves one
    # on a small machine can leave a later task waiting forever.
    return ray.remote(EnvWorker).options(num_cpus=0, **preferring(labels or {})).remote(config)


def preferring(labels: Mapping[str, str]) -> dict[str, Any]:
    """Ray actor options: a node with `labels` first, any node with room otherwise (the empty
    selector of the fallback matches every node)."""
    if not labels:
        return {}
    return {"label_selector": dict(labels), "fallback_strategy": [{"label_selector": {}}]}


def on_driver_node() -> dict[str, Any]:
    """Ray actor options that pin an actor to the node of the process creating it (the driver)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)}
