"""`BuiltinEngineActor`: a `BuiltinEngine` inside a Ray async actor (the built-in twin of EngineActor).

    actor = BuiltinEngineActor.options(num_cpus=1).remote(BuiltinEngineConfig(model_dir=...))
    startup_s = ray.get(actor.start.remote())
    result = ray.get(actor.generate.remote(GenerationRequest(...)))

Contract: methods mirror the `Engine` protocol and take/return its dataclasses (errors cross as
their own types, e.g. `WeightSyncError`, wrapped by Ray). The engine is built on first use inside
the actor's event loop, whose one asyncio task runs the decode loop. `num_threads` (if given) sets
torch's intra-op threads in the actor; it should match the actor's CPU reservation. `nice` lowers
the CPU priority of every thread of the actor (kpop.runtime.build.rollout_nice). `load()` never
waits for the build: before it, it reports an idle engine at the initial version.
"""

from __future__ import annotations

import ray

from kpop.rollout.builtin_engine import BuiltinEngine, BuiltinEngineConfig
from kpop.rollout.engine_host import EngineHost
from kpop.rollout.niceness import yield_cpu


class _BuiltinEngineActor(EngineHost):
    def __init__(self, config: BuiltinEngineConfig, num_threads: int | None = None, nice: int = 0) -> None:
        if nice:
            yield_cpu(nice)
        super().__init__(config)
        self._num_threads = num_threads

    def _build(self) -> BuiltinEngine:
        if self._num_threads:
            import torch

            torch.set_num_threads(self._num_threads)
        return BuiltinEngine.from_config(self._config)


BuiltinEngineActor = ray.remote(num_cpus=1, max_concurrency=1000)(_BuiltinEngineActor)
