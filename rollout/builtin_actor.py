"""`BuiltinEngineActor`: a `BuiltinEngine` inside a Ray async actor (the built-in twin of EngineActor).

    actor = BuiltinEngineActor.options(num_cpus=1).remote(BuiltinEngineConfig(model_dir=...))
    startup_s = ray.get(actor.start.remote())
    result = ray.get(actor.generate.remote(GenerationRequest(...)))

Contract: methods mirror the `Engine` protocol and take/return its dataclasses (errors cross as
their own types, e.g. `WeightSyncError`, wrapped by Ray). The engine is built on first use inside
the actor's event loop, whose one asyncio task runs the decode loop. `num_threads` (if given) sets
torch's intra-op threads in the actor; it should match the actor's CPU reservation. `load()` never
waits for the build: before it, it reports an idle engine at the initial version.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import ray
from kpop.rollout.builtin_engine import BuiltinEngine, BuiltinEngineConfig
from kpop.rollout.engine import (
    EngineLoad,
    GenerationRequest,
    GenerationResult,
    TokenDelta,
    WeightUpdate,
)


class _BuiltinEngineActor:
    def __init__(self, config: BuiltinEngineConfig, num_threads: int | None = None) -> None:
        self._config = config
        self._num_threads = num_threads
        self._engine: BuiltinEngine | None = None
        self._building: asyncio.Lock | None = None

    async def _get(self) -> BuiltinEngine:
        if self._engine is None:
            if self._building is None:
                self._building = asyncio.Lock()
            async with self._building:
                if self._engine is None:
                    if self._num_threads:
                        import torch

                        torch.set_num_threads(self._num_threads)
                    self._engine = BuiltinEngine.from_config(self._config)
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
        if self._engine is not None:
            await self._engine.close()
            self._engine = None


BuiltinEngineActor = ray.remote(num_cpus=1, max_concurrency=1000)(_BuiltinEngineActor)
