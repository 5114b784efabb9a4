"""The environment worker: runs agent episodes (environment + agent loop) off the scheduler.

One async Ray actor holds the tokenizer and runs many episodes concurrently on its own event loop;
environment steps (tools, sandboxes) happen here, so they never block the scheduler or the engines.
Each episode gets a fresh environment instance. Generation goes to an engine actor handle.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, replace

from kpop.envs.registry import make_env
from kpop.rollout.agent_loop import Episode, LoopLimits, Policy, run_episode, solver_policy
from kpop.rollout.chat import ChatFormat
from kpop.rollout.engine import GenerationRequest, GenerationResult, SamplingParams
from kpop.trajectory import Trajectory


@dataclass(frozen=True)
class EnvConfig:
    name: str
    options: dict
    rewards: tuple = ()  # reward-shaping terms (kpop.spec.envs.RewardTermSpec)


class EnvWorker:
    def __init__(self, tokenizer_dir: str, envs: list[EnvConfig], limits: LoopLimits, worker_id: int = 0) -> None:
        from transformers import AutoTokenizer

        self.chat = ChatFormat(AutoTokenizer.from_pretrained(tokenizer_dir))
        self.configs = {e.name: e for e in envs}
        self.limits = limits
        self.worker_id = worker_id
        self._ids = itertools.count()

    async def rollout(self, episode: Episode, engine, sampling: SamplingParams) -> Trajectory:
        """One episode with the engine (a Ray actor handle or an Engine) as the policy."""
        env, options = self._make(episode.env_name)
        return await run_episode(env, episode, self.chat, self._engine_policy(engine, sampling, episode),
                                 self.limits, options)

    async def solve(self, episode: Episode) -> Trajectory:
        """One episode with the environment's reference solver as the policy."""
        env, options = self._make(episode.env_name)
        return await run_episode(env, episode, self.chat, solver_policy(env, self.chat), self.limits, options)

    def _make(self, name: str):
        config = self.configs.get(name, EnvConfig(name, {}))
        env = make_env(name, config.options)
        env.set_reward_terms(config.rewards)
        return env, config.options

    def ping(self) -> int:
        return self.worker_id

    def _engine_policy(self, engine, sampling: SamplingParams, episode: Episode) -> Policy:
        stop_ids = list(dict.fromkeys([*sampling.stop_token_ids, self.chat.eos_token_id]))

        turn = itertools.count()

        async def act(context_ids: list[int], max_tokens: int) -> GenerationResult:
            seed = None if sampling.seed is None else _request_seed(sampling.seed, episode, next(turn))
            request = GenerationRequest(
                request_id=f"w{self.worker_id}-{next(self._ids)}",
                prompt_ids=context_ids,
                sampling=replace(sampling, max_tokens=max_tokens, stop_token_ids=stop_ids, seed=seed),
            )
            remote = getattr(engine.generate, "remote", None)
            return await (remote(request) if remote is not None else engine.generate(request))

        return act


def _request_seed(base: int, episode: Episode, turn: int) -> int:
    """A per-request sampling seed: reproducible, yet different for every sample of a group."""
    key = f"{base}|{episode.env_name}|{episode.seed}|{episode.sample}|{turn}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little") & 0x7FFFFFFF
