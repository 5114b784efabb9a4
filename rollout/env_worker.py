"""The environment worker: runs agent episodes (environment + agent loop) off the scheduler.

One async Ray actor holds the tokenizer and runs many episodes concurrently on its own event loop;
environment steps (tools, sandboxes) happen here, so they never block the scheduler or the engines.
Each episode gets a fresh environment instance. Generation goes to an engine actor handle, an
in-process Engine, or `Routed` (kpop.rollout.routing): the KPop engine router, which places each
request on the least-loaded engine; routed turns survive migration and engine death by resuming from
their prefix (see `_routed_turn`). The finished turns of every running episode are recorded, so a
checkpoint can keep them (`partials`) and a restarted run can replay them (kpop.rollout.replay).

A worker is built from one `WorkerConfig` (made from the RunSpec by kpop.runtime), which crosses into
its actor process as it is: the environments it may run (options and reward terms), the agent-loop
limits, and the sandbox section, which configures this process's sandbox pool (backend, limits,
pool size) before any episode runs. An episode of an environment not in the config is an error.

Reference-solver episodes (`solve`, the cold start's data) run at most `sandbox.pool_size` at a
time per worker: a run submits thousands at once, and an environment step that waits in the
sandbox pool's queue spends its step timeout there (measured: 512 coding solves at once on 4 slots,
249 ended as step timeouts and never became data). Rollouts are bounded by the scheduler instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from dataclasses import dataclass, field, replace

from kpop.envs.registry import make_env
from kpop.envs.sandbox.default import configure as configure_sandbox
from kpop.faults import fault_point
from kpop.rollout.agent_loop import Episode, LoopLimits, Policy, run_episode, solver_policy
from kpop.rollout.chat import ChatFormat
from kpop.rollout.engine import GenerationRequest, GenerationResult, SamplingParams
from kpop.rollout.niceness import yield_cpu
from kpop.rollout.replay import PartialEpisode, RecordedTurn, Replay, replaying
from kpop.rollout.routing import Routed
from kpop.spec.sandbox import SandboxSpec
from kpop.trajectory import Trajectory

MAX_RESUMES = 16  # a turn interrupted more often than this ends with finish_reason "abort"


@dataclass(frozen=True)
class EnvConfig:
    name: str
    options: dict
    rewards: tuple  # reward-shaping terms (kpop.spec.envs.RewardTermSpec)


@dataclass(frozen=True)
class WorkerConfig:
    tokenizer_dir: str
    envs: tuple[EnvConfig, ...]
    limits: LoopLimits
    sandbox: SandboxSpec = field(default_factory=SandboxSpec)
    worker_id: int = 0
    nice: int = 0  # CPU niceness of the worker's process (kpop.runtime.build.rollout_nice)


class EnvWorker:
    def __init__(self, config: WorkerConfig) -> None:
        from kpop.models.tokenizer import load_tokenizer

        if config.nice:
            yield_cpu(config.nice)  # only ever in the worker's own actor process
        configure_sandbox(config.sandbox)
        self.chat = ChatFormat(load_tokenizer(config.tokenizer_dir))
        self.configs = {e.name: e for e in config.envs}
        self.limits = config.limits
        self.worker_id = config.worker_id
        self._solving = asyncio.Semaphore(config.sandbox.pool_size)
        self._ids = itertools.count()
        self.resumed = 0  # routed turns resumed from their prefix (migration, engine failure)
        self.replayed = 0  # recorded turns replayed after a restart instead of generated again
        self._live: dict[int, tuple[Episode, list[RecordedTurn]]] = {}

    async def rollout(self, episode: Episode, engine, sampling: SamplingParams,
                      prefix: tuple[RecordedTurn, ...] = ()) -> Trajectory:
        """One episode with the engine (a Ray actor handle, an Engine or `Routed`) as the policy; `prefix`:
        turns recorded before a restart, replayed while the environment reproduces their context."""
        env, options = self._make(episode.env_name)
        key, record, replay = next(self._ids), [], Replay(prefix)
        self._live[key] = (episode, record)
        try:
            policy = replaying(self._engine_policy(engine, sampling, episode), replay, record)
            return await run_episode(env, episode, self.chat, policy, self.limits, options)
        finally:
            del self._live[key]
            self.replayed += replay.replayed

    def partials(self) -> list[PartialEpisode]:
        """The finished turns of every running episode (episodes with none are left out)."""
        return [PartialEpisode(ep.group_id, ep.sample, tuple(record))
                for ep, record in self._live.values() if record]

    async def solve(self, episode: Episode, overrides: dict | None = None) -> Trajectory:
        """One episode with the environment's reference solver as the policy; `overrides` are merged
        over the configured options (a cold-start phase with another data mix, RunSpec sft.anneal)."""
        env, options = self._make(episode.env_name, overrides)
        async with self._solving:
            return await run_episode(env, episode, self.chat, solver_policy(env, self.chat), self.limits, options)

    def _make(self, name: str, overrides: dict | None = None):
        config = self.configs.get(name)
        if config is None:
            raise KeyError(f"environment {name!r} is not configured on this worker (configured: {sorted(self.configs)})")
        options = {**config.options, **(overrides or {})}
        env = make_env(name, options)
        env.set_reward_terms(config.rewards)
        return env, options

    def ping(self) -> int:
        return self.worker_id

    def _engine_policy(self, engine, sampling: SamplingParams, episode: Episode) -> Policy:
        stop_ids = list(dict.fromkeys([*sampling.stop_token_ids, self.chat.eos_token_id]))
        turn = itertools.count()

        async def act(context_ids: list[int], max_tokens: int) -> GenerationResult:
            k = next(turn)
            seed = None if sampling.seed is None else _request_seed(sampling.seed, episode, k)
            params = replace(sampling, max_tokens=max_tokens, stop_token_ids=stop_ids, seed=seed)
            if not isinstance(engine, Routed):
                request = GenerationRequest(f"w{self.worker_id}-{next(self._ids)}", context_ids, params,
                                            episode.priority)
                remote = getattr(engine.generate, "remote", None)
                result = await (remote(request) if remote is not None else engine.generate(request))
            else:
                result = await self._routed_turn(engine.router, context_ids, params, episode.priority)
            # tests/faults: the worker killed mid-episode, a turn generated and its env step not run
            fault_point(None, f"rollout:{episode.group_id}:{episode.sample}:turn_{k + 1}_generated")
            return result

        return act

    async def _routed_turn(self, router, context_ids: list[int], params: SamplingParams,
                           priority: int = 0) -> GenerationResult:
        """One model turn through the engine router, resumed from its prefix when interrupted.

        An "abort" (the scheduler migrated the request off a congested engine) or a dead engine
        (RayActorError) does not end the turn: the tokens generated so far are kept with their
        log-probs and versions, and `context + partial` is re-submitted with the remaining
        max_tokens to another engine. An engine that died loses only the tokens of its current
        request. The result is the concatenation: earlier tokens are never regenerated.
        """
        from ray.exceptions import RayActorError

        tokens: list[int] = []
        logprobs: list[float] = []
        versions: list[int] = []
        reason, exclude, rid = "abort", None, ""
        for _ in range(MAX_RESUMES):
            remaining = params.max_tokens - len(tokens)
            if remaining <= 0:
                reason = "length"
                break
            rid = f"w{self.worker_id}-{next(self._ids)}"
            lease = await router.acquire.remote(rid, exclude)
            request = GenerationRequest(rid, [*context_ids, *tokens], replace(params, max_tokens=remaining), priority)
            try:
                res = await lease.handle.generate.remote(request)
            except RayActorError:
                await router.report_dead.remote(lease.index, lease.generation)
                self.resumed += 1
                exclude = None
                continue
            finally:
                await router.release.remote(rid)
            tokens += res.token_ids
            logprobs += res.logprobs
            versions += res.versions
            reason = res.finish_reason
            if reason != "abort":
                break
            self.resumed += 1
            exclude = lease.index
        return GenerationResult(rid, tokens, logprobs, versions, reason)

    def stats(self) -> dict[str, int]:
        return {"resumed": self.resumed, "replayed": self.replayed}


def _request_seed(base: int, episode: Episode, turn: int) -> int:
    """A per-request sampling seed: reproducible, yet different for every sample of a group."""
    key = f"{base}|{episode.env_name}|{episode.seed}|{episode.sample}|{turn}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little") & 0x7FFFFFFF
