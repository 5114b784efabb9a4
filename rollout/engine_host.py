"""`EngineHost`: the body shared by every engine Ray actor (vLLM, built-in).

Contract: methods mirror the `Engine` protocol and take/return its dataclasses (errors cross as
their own types, wrapped by Ray). The engine is built on first use inside the actor's event loop
(engines bind their loops and sockets to the loop that first drives them); concurrent first calls
wait on one build. `load()` never waits for the build: before it, it reports an idle engine at the
configured initial version. Subclasses only say how to build their engine (`_build`).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

from kpop.rollout.engine import EngineLoad, GenerationRequest, GenerationResult, TokenDelta, WeightUpdate


class EngineHost:
    def __init__(self, config: Any) -> None:
        self._config = config
        self._engine: Any = None
        self._building: asyncio.Lock | None = None

    def _build(self) -> Any:
        """Construct the engine from `self._config` (runs once, inside the actor's event loop)."""
        raise TypeError(f"{type(self).__name__} must define _build()")

    async def _get(self):
        if self._engine is None:
            if self._building is None:
                self._building = asyncio.Lock()
            async with self._building:
                if self._engine is None:
                    self._engine = self._build()
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
        """Free the engine (processes, caches); the actor can then be killed."""
        if self._engine is not None:
            closed = self._engine.close()
            if inspect.isawaitable(closed):
                await closed
            self._engine = None
