"""The runtime configuration of a run: typed objects, one per kind of process, made from a RunSpec.

Invariants:
- plain frozen data (dataclasses holding dataclasses and frozen spec models): an engine's
  `VLLMEngineConfig` or `BuiltinEngineConfig` (the engine `rollout.engine.type` names or "auto"
  chooses) and a worker's `WorkerConfig` cross into their Ray actors as they are;
- a pure function of (spec, model folder, the machine's CPU count and, for an "auto" engine,
  whether vLLM is installed): equal inputs give equal objects, so the objects can be compared to tell what a spec change does at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the engine config's module imports torch; these are annotations only
    from kpop.rollout.builtin_engine import BuiltinEngineConfig
    from kpop.rollout.engine import SamplingParams
    from kpop.rollout.env_worker import WorkerConfig
    from kpop.rollout.vllm_engine import VLLMEngineConfig
    from kpop.spec.run import LoggingSpec


@dataclass(frozen=True)
class EngineLaunch:
    """One engine replica: the engine's own config (its type says which engine) and where and how
    its actor runs."""

    config: VLLMEngineConfig | BuiltinEngineConfig
    num_cpus: float
    num_gpus: float
    nice: int  # CPU niceness of the actor and the engine processes it spawns
    labels: dict[str, str] = field(default_factory=dict)  # node labels it goes to first (cluster.placement.engine)


@dataclass(frozen=True)
class RayStart:
    """How the driver joins Ray: a cluster address, or a local instance of `num_cpus` CPUs; how
    long it waits for the cluster to answer and to place the run's actors (kpop.runtime.placement;
    cluster.start_timeout_s on a cluster, longer on a local instance: kpop.runtime.build.ray_start)."""

    address: str | None
    num_cpus: int
    timeout_s: float = 60.0


@dataclass(frozen=True)
class Placement:
    """Node labels per role (cluster.placement): required by the learner ranks, preferred by
    engines and environment workers (kpop.runtime.actors)."""

    learner: dict[str, str] = field(default_factory=dict)
    engine: dict[str, str] = field(default_factory=dict)
    env_worker: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricsConfig:
    """Where the run's records go and which sinks and progress display it uses (kpop.metrics)."""

    run_dir: Path
    logging: LoggingSpec


@dataclass(frozen=True)
class RunRuntime:
    engines: tuple[EngineLaunch, ...]
    workers: tuple[WorkerConfig, ...]
    sampling: SamplingParams   # training rollouts, and the held-out "sampled" reward
    greedy: SamplingParams     # held-out greedy evaluation
    reward_terms: dict[str, tuple]  # environment name -> its reward terms (group-level ones: the loops)
    ray: RayStart
    metrics: MetricsConfig
    placement: Placement = field(default_factory=Placement)
