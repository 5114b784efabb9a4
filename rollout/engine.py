"""The engine interface the scheduler and the agent loop use, whatever generates the tokens.

Contract:
- `generate(request)` returns the generated token ids with the engine's log-prob of each sampled
  token and the policy version that produced it. Versions change only between tokens, at a weight
  update, so a request that spans an update carries both versions.
- `stream(request)` yields the same tokens as deltas as they are produced.
- `pause()` stops scheduling new tokens (in-flight requests are kept, not aborted); `resume()`
  continues them. `update_weights` is only applied while paused or idle: an engine never samples
  from a half-updated model.
- `abort(request_id)` ends a request (finish_reason "abort") and frees its state.
- `load()` is cheap and never blocks.
- `request.priority`: when more requests wait than the engine runs at once, lower values start
  first, ties in arrival order (both engines).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 64
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    priority: int = 0  # lower is scheduled first; ties in arrival order (vLLM's "priority" policy)


@dataclass(frozen=True)
class TokenDelta:
    token_ids: list[int]
    logprobs: list[float]
    versions: list[int]
    finish_reason: str | None = None  # set on a request's last delta by engines that know it


@dataclass(frozen=True)
class GenerationResult:
    request_id: str
    token_ids: list[int]
    logprobs: list[float]
    versions: list[int]
    finish_reason: str  # "stop" | "length" | "abort"


@dataclass(frozen=True)
class WeightUpdate:
    """A full set of weights for policy `version`, as safetensors-serialised chunks."""

    version: int
    chunks: list[bytes]


@dataclass(frozen=True)
class EngineLoad:
    running: int
    waiting: int
    version: int
    paused: bool
    generated_tokens: int


@runtime_checkable
class Engine(Protocol):
    async def generate(self, request: GenerationRequest) -> GenerationResult: ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]: ...

    async def abort(self, request_id: str) -> None: ...

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def update_weights(self, update: WeightUpdate) -> None: ...

    def load(self) -> EngineLoad: ...
