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
- `load()` never waits for the engine build: before it, it reports an idle engine at the initial
  version. All methods are coroutines (Ray runs them on the actor's one event loop).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import ray

from kpop.rollout.engine import EngineLoad, GenerationRequest, GenerationResult, TokenDelta, WeightUpdate
from kpop.rollout.vllm_engine import VLLMEngine, VLLMEngineConfig

# vLLM's own request/stat logging is per-request noise at RL rates.
DEFAULT_ENV = {"VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}


class _EngineActor:
    def __init__(self, config: VLLMEngineConfig, env: dict[str, str] | None = None) -> None:
        for key, value in {**DEFAULT_ENV, **(env or {})}.items():
            os.environ[key] = value
        self._config = config
        self._engine: VLLMEngine | None = None
        self._building: asyncio.Lock | None = None

    async def _get(self) -> VLLMEngine:
        if self._engine is None:
            if self._building is None:
                self._building = asyncio.Lock()
            async with self._building:
                if self._engine is None:
                    self._engine = VLLMEngine.from_config(self._config)
        return self._engine

    async def start(self) -> float:
        """Build the engine if needed; return its start-up time in seconds."""
        return (await self._get()).startup_s

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return await (await self._get()).generate(request)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        async for delta in (await self._get()).stream(request):
            yield delta

    async def abort(self, request_id: str) -> None:
        await (await self._get()).abort(request_id)

    async def pause(self) -> None:
        await (await self._get()).pause()

    async def resume(self) -> None:
        await (await self._get()).resume()

    async def update_weights(self, update: WeightUpdate, timeout_s: float | None = None) -> float:
        """Apply `update`; returns the time it took (seconds)."""
        engine = await self._get()
        await engine.update_weights(update, timeout_s=timeout_s)
        return engine.last_update_s or 0.0

    async def load(self) -> EngineLoad:
        if self._engine is None:
            return EngineLoad(running=0, waiting=0, version=self._config.initial_version, paused=False, generated_tokens=0)
        return self._engine.load()

    async def close(self) -> None:
        """Free the vLLM engine (its subprocess and KV cache); the actor can then be killed."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None


EngineActor = ray.remote(num_cpus=1, max_concurrency=1000)(_EngineActor)
