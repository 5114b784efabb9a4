"""`BuiltinEngine`: the `Engine` protocol (kpop.rollout.engine) on a PyTorch model, no vLLM.

Serves the hybrid Lightning/MLA model (`bailing_hybrid`) and standard-attention transformers
models (Llama and the like) with continuous batching (kpop.rollout.builtin.scheduler).

Contract and invariants (the same as `VLLMEngine` wherever both apply):
- Prompts and outputs are token ids; text is only produced to match stop strings (which need a
  tokenizer in the model folder; a request with stop strings is refused without one).
- Every generated token comes with its raw log-prob (log_softmax of the fp32 logits, before
  temperature/top-k/top-p: what `learner.logprobs.token_logprobs` recomputes) and the weight
  version that produced it. The token that ends a request by EOS or `stop_token_ids` is included.
  Sampling draws from a per-request `torch.Generator` (`SamplingParams.seed`, else derived from
  the engine seed and the request's arrival number), so results do not depend on batching.
- The decode loop is one asyncio task: steps (admit + prefill + one decode for all running) run
  on the process's torch thread (kpop.rollout.builtin.torch_thread; model loading, weight staging
  and commits too: one OpenMP team per process), in bursts of up to `burst_s` (0.05 s)
  while holding `_step_lock`; between bursts the event loop dispatches tokens. Abort, pause and weight updates interrupt a burst after
  its current step, so they wait for at most one step; tokens stream once per burst.
- `pause()` returns once no step is running; in-flight requests are kept ("keep" mode) and new
  ones queue. `resume()` continues them.
- `update_weights` validates and stages the update (timeout: `WeightSyncError`, nothing loaded),
  then, between two steps, copies it into the model, drops every cache and sets the version. The
  running requests are re-prefilled (prompt + output) under the new weights, so their later tokens
  are exactly the new policy's and carry the new version. A rejected update raises
  `WeightSyncError` and the old weights and version keep serving.
- `request.priority`: when more requests wait than `max_batch` run at once, lower values are
  admitted first (ties in arrival order), as in the vLLM engine.
- `abort(request_id)` frees the request's cache rows before returning; its result/stream ends with
  finish_reason "abort". `load()` reads counters only.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import torch

from kpop.rollout.builtin import torch_thread
from kpop.rollout.builtin.adapters import adapter_for
from kpop.rollout.builtin.sampling import new_generator
from kpop.rollout.builtin.scheduler import Scheduler, Sequence, StepEvent
from kpop.rollout.builtin.weights import WeightLoader, load_model
from kpop.rollout.engine import (
    EngineLoad,
    GenerationRequest,
    GenerationResult,
    TokenDelta,
    WeightUpdate,
)
from kpop.rollout.weight_sync import WeightSyncError


@dataclass(frozen=True)
class BuiltinEngineConfig:
    """Everything needed to build a `BuiltinEngine` (plain data: crosses process boundaries)."""

    model_dir: str
    max_batch: int = 64
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    max_model_len: int | None = None
    weight_update_timeout_s: float = 60.0
    initial_version: int = 0


class BuiltinEngine:
    def __init__(
        self, model_dir: str | Path, max_batch: int = 64, device: str = "cpu", dtype: torch.dtype | str = torch.float32,
        seed: int = 0, max_model_len: int | None = None, weight_update_timeout_s: float = 60.0, initial_version: int = 0,
    ) -> None:
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        start = time.perf_counter()
        self.model_dir = Path(model_dir)
        self.model = torch_thread.call(load_model, self.model_dir, device, dtype)
        self.weights = WeightLoader(self.model, self.model_dir)
        self.tokenizer = _load_tokenizer(self.model_dir)
        self.eos_ids = _eos_ids(self.model)
        self.max_model_len = max_model_len or int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.scheduler = Scheduler(adapter_for(self.model), max_batch, self.max_model_len, self.tokenizer)
        self.seed, self.weight_update_timeout_s = seed, weight_update_timeout_s
        self._version, self._paused, self._updating = initial_version, False, False
        self._queues: dict[str, asyncio.Queue] = {}
        self._arrivals = 0
        self._step_lock, self._update_lock, self._wake = asyncio.Lock(), asyncio.Lock(), asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._interrupt = threading.Event()  # set by control calls: the running burst ends after its step
        self.burst_s = 0.05
        self._background: set[asyncio.Task] = set()
        self.last_update_s: float | None = None
        self.startup_s = time.perf_counter() - start

    @classmethod
    def from_config(cls, config: BuiltinEngineConfig) -> BuiltinEngine:
        return cls(**config.__dict__)

    # ----------------------------------------------------------------------------- generation
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        token_ids, logprobs, versions, reason = [], [], [], "abort"
        async for delta in self._run(request):
            token_ids += delta.token_ids
            logprobs += delta.logprobs
            versions += delta.versions
            reason = delta.finish_reason or reason
        return GenerationResult(request.request_id, token_ids, logprobs, versions, reason)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        async for delta in self._run(request):
            if delta.token_ids or delta.finish_reason:
                yield delta

    async def _run(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        seq = self._new_sequence(request)
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request.request_id] = queue
        self.scheduler.submit(seq)
        self._kick()
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finish_reason is not None
                yield item
        finally:
            if self._queues.get(request.request_id) is queue:
                self._queues.pop(request.request_id)
                if not finished:  # the consumer went away: free the request's state
                    task = asyncio.ensure_future(self._abort_quietly(request.request_id))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)

    def _new_sequence(self, request: GenerationRequest) -> Sequence:
        rid, sp, prompt = request.request_id, request.sampling, list(request.prompt_ids)
        if rid in self._queues:
            raise ValueError(f"request id {rid!r} is already in flight")
        if not prompt or len(prompt) >= self.max_model_len:
            raise ValueError(f"prompt of {len(prompt)} tokens; it must have 1..{self.max_model_len - 1}")
        vocab = self.model.config.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise ValueError(f"prompt token ids must lie in [0, {vocab})")
        if sp.stop and self.tokenizer is None:
            raise ValueError(f"stop strings need a tokenizer; {self.model_dir} has none (use stop_token_ids)")
        if sp.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        self._arrivals += 1
        seed = sp.seed if sp.seed is not None else hash((self.seed, self._arrivals))
        return Sequence(rid, prompt, sp, new_generator(seed), frozenset(sp.stop_token_ids) | self.eos_ids,
                        priority=request.priority, arrival=self._arrivals)

    # ----------------------------------------------------------------------------- the loop
    def _kick(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._loop())
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            if self._paused or self._updating or not self.scheduler.has_work():
                await self._wake.wait()
                continue
            async with self._step_lock:
                if self._paused or self._updating:
                    continue
                try:
                    events = await torch_thread.run(self._burst, self._version)
                except Exception as exc:  # noqa: BLE001 - a failed step fails every live request, not the loop
                    self._fail_all(exc)
                    continue
            self._dispatch(events)
            await asyncio.sleep(0)

    def _burst(self, version: int) -> list[StepEvent]:
        """Steps until `burst_s` has passed, a control call interrupts, or the work runs out.

        Several steps per thread hop: on a loaded machine the hop costs as much as a small step.
        """
        self._interrupt.clear()
        start, events = time.perf_counter(), []
        while True:
            events += self.scheduler.step(version)
            if self._interrupt.is_set() or not self.scheduler.has_work() or time.perf_counter() - start > self.burst_s:
                return events

    def _dispatch(self, events: list[StepEvent]) -> None:
        for ev in events:
            queue = self._queues.get(ev.request_id)
            if queue is not None:
                queue.put_nowait(TokenDelta([ev.token_id], [ev.logprob], [ev.version], ev.finish_reason))

    def _fail_all(self, exc: Exception) -> None:
        for rid in self.scheduler.clear():
            queue = self._queues.get(rid)
            if queue is not None:
                queue.put_nowait(RuntimeError(f"built-in engine step failed: {exc!r}"))

    # ----------------------------------------------------------------------------- control
    async def abort(self, request_id: str) -> None:
        self._interrupt.set()
        async with self._step_lock:
            live = self.scheduler.abort(request_id)
        queue = self._queues.get(request_id)
        if live and queue is not None:
            queue.put_nowait(TokenDelta([], [], [], "abort"))

    async def _abort_quietly(self, request_id: str) -> None:
        self._interrupt.set()
        async with self._step_lock:
            self.scheduler.abort(request_id)

    async def pause(self) -> None:
        self._paused = True
        self._interrupt.set()
        async with self._step_lock:  # wait for a step in progress
            pass

    async def resume(self) -> None:
        self._paused = False
        self._wake.set()

    async def update_weights(self, update: WeightUpdate, timeout_s: float | None = None) -> None:
        """Apply `update` all-or-nothing between two steps (see the module docstring)."""
        timeout = self.weight_update_timeout_s if timeout_s is None else timeout_s
        async with self._update_lock:
            start = time.perf_counter()
            try:
                staged = await asyncio.wait_for(torch_thread.run(self.weights.stage, update.chunks), timeout)
            except TimeoutError:
                raise WeightSyncError(
                    f"weight update to version {update.version} timed out after {timeout:g} s while staging; "
                    f"nothing was loaded, version {self._version} stays in service"
                ) from None
            self._updating = True
            self._interrupt.set()
            try:
                async with self._step_lock:
                    await asyncio.shield(torch_thread.run(self._commit, staged, update.version))
            finally:
                self._updating = False
                self._wake.set()
            self.last_update_s = time.perf_counter() - start

    def _commit(self, staged: dict, version: int) -> None:
        self.weights.commit(staged)
        self.scheduler.invalidate()
        self._version = version

    # ----------------------------------------------------------------------------- status
    def load(self) -> EngineLoad:
        return EngineLoad(
            running=len(self.scheduler.running), waiting=self.scheduler.num_waiting(), version=self._version,
            paused=self._paused or self._updating, generated_tokens=self.scheduler.generated_tokens,
        )

    def cache_nbytes(self) -> int:
        """Bytes held by the running requests' caches (0 when nothing runs)."""
        return self.scheduler.cache_nbytes()

    @property
    def version(self) -> int:
        return self._version

    async def close(self) -> None:
        """Stop the decode loop; live requests end with an error. The engine is unusable afterwards."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        self._fail_all(RuntimeError("engine closed"))


def _load_tokenizer(model_dir: Path):
    if not any((model_dir / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from kpop.models.tokenizer import load_tokenizer

    return load_tokenizer(model_dir)


def _eos_ids(model) -> frozenset[int]:
    ids: set[int] = set()
    for cfg in (getattr(model, "generation_config", None), model.config):
        eos = getattr(cfg, "eos_token_id", None)
        if eos is not None:
            ids.update([eos] if isinstance(eos, int) else eos)
    return frozenset(ids)
