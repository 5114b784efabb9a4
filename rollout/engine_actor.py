"""`EngineActor`: a `VLLMEngine` inside a Ray async actor.

Usage (the caller always chooses the CPU reservation; on 2 cores an actor that silently takes
the default can starve later tasks):

    actor = EngineActor.options(num_cpus=1).remote(VLLMEngineConfig(model_dir=..., kv_cache_gib=0.25))
    startup_s = ray.get(actor.start.remote())          # optional: otherwise the first call starts it
    result = ray.get(actor.generate.remote(GenerationRequest(...)))

Contract:
- Methods mirror the `Engine` protocol (generate, stream, abort, pause, resume, update_weights,
  load) and take/return its dataclasses; errors cross as their own types (`WeightSyncError`
  from a rejected update), wrapped by Ray.
- The engine is built on first use inside the actor's event loop: vLLM's `AsyncLLM` binds its
  output handler and sockets to the loop that first drives it. Building blocks that loop (15-60 s
  on CPU), so calls made meanwhile wait; `start()` returns the build time.
- vLLM spawns its engine-core process from the actor process; `env` is applied to the actor's
  environment before that, so settings like VLLM_CPU_OMP_THREADS_BIND reach it.
- `nice` lowers the CPU priority of the actor and of the vLLM processes it spawns (so a learner
  sharing the cores keeps them; kpop.runtime.build.rollout_nice).
- `load()` never waits for the engine build: before it, it reports an idle engine at the initial
  version. All methods are coroutines (Ray runs them on the actor's one event loop).
"""

from __future__ import annotations

import os

import ray

from kpop.rollout.engine_host import EngineHost
from kpop.rollout.niceness import yield_cpu
from kpop.rollout.vllm_engine import VLLMEngine, VLLMEngineConfig

# vLLM's own request/stat logging is per-request noise at RL rates.
DEFAULT_ENV = {"VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}


class _EngineActor(EngineHost):
    def __init__(self, config: VLLMEngineConfig, env: dict[str, str] | None = None, nice: int = 0) -> None:
        for key, value in {**DEFAULT_ENV, **(env or {})}.items():
            os.environ[key] = value
        if nice:
            yield_cpu(nice)  # inherited by the engine-core process vLLM spawns later
        super().__init__(config)

    def _build(self) -> VLLMEngine:
        return VLLMEngine.from_config(self._config)


EngineActor = ray.remote(num_cpus=1, max_concurrency=1000)(_EngineActor)
