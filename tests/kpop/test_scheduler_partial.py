"""Partial rollouts with a real vLLM engine: a turn interrupted mid-generation keeps its tokens.

- preempt and resume from prefix: a request aborted on its engine (what tail migration and engine
  failover do) is resumed by the worker from `prompt + partial tokens`; the result equals the
  uninterrupted greedy generation token for token, with matching log-probs;
- across a weight update (the step boundary): the in-flight turn is frozen (pause "keep"), resumed
  under the new version, and keeps every earlier token with its original version;
- across a restart of the run: a running episode's finished turns are reported (what a checkpoint
  keeps), and the episode re-run with them as its prefix replays them token for token, with their
  log-probs and versions, while the engine generates only what comes after.
"""

import asyncio

import pytest
import torch

from kpop.envs.contract import AgentEnv, Message, StepInfo, StepResult, Task
from kpop.envs.registry import register_env
from kpop.rollout.agent_loop import Episode, LoopLimits
from kpop.rollout.engine import GenerationRequest, GenerationResult, SamplingParams, WeightUpdate
from kpop.rollout.env_worker import EnvWorker, WorkerConfig
from kpop.rollout.replay import RecordedTurn, context_digest
from kpop.runtime.build import env_config
from kpop.scheduler.router import EngineRouter
from kpop.spec.envs import EnvEntrySpec

PROMPT = [0, 5, 6, 7]
N = 96


@pytest.fixture(scope="module")
def engine(ray_session, tiny_llama_dir):
    from kpop.rollout.engine_actor import EngineActor
    from kpop.rollout.vllm_engine import VLLMEngineConfig

    handle = EngineActor.options(num_cpus=1).remote(VLLMEngineConfig(model_dir=str(tiny_llama_dir), kv_cache_gib=0.25))
    ray_session.get(handle.start.remote(), timeout=600)
    yield handle
    ray_session.get(handle.close.remote(), timeout=120)
    ray_session.kill(handle)


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n)


async def started(engine, router, min_tokens: int = 8) -> str:
    """Waits until one routed request is live and has produced some tokens; returns its id."""
    base = (await engine.load.remote()).generated_tokens
    for _ in range(3000):
        live = await router.live_requests.remote()
        if live and (await engine.load.remote()).generated_tokens >= base + min_tokens:
            return next(iter(live))
        await asyncio.sleep(0.005)
    raise AssertionError("the routed request never started")


async def test_aborted_turn_resumes_from_its_prefix_token_for_token(engine, tiny_llama_dir):
    router = EngineRouter.remote([engine])
    worker = EnvWorker(WorkerConfig(str(tiny_llama_dir), (), LoopLimits(), worker_id=7))
    ref = await engine.generate.remote(GenerationRequest("ref", PROMPT, greedy(N)))
    assert len(ref.token_ids) == N
    turn = asyncio.create_task(worker._routed_turn(router, PROMPT, greedy(N)))
    rid = await started(engine, router)
    await engine.abort.remote(rid)                  # preempted mid-generation
    res = await asyncio.wait_for(turn, 120)
    assert worker.resumed >= 1                      # it really was interrupted and resumed
    assert res.token_ids == ref.token_ids and res.finish_reason == "length"
    assert torch.allclose(torch.tensor(res.logprobs), torch.tensor(ref.logprobs), atol=1e-3)
    assert res.versions == ref.versions


async def test_turn_in_flight_across_a_weight_update_keeps_earlier_tokens_and_versions(engine, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from kpop.rollout.weight_sync import state_dict_to_chunks

    router = EngineRouter.remote([engine])
    worker = EnvWorker(WorkerConfig(str(tiny_llama_dir), (), LoopLimits(), worker_id=8))
    old = (await engine.load.remote()).version
    ref = await engine.generate.remote(GenerationRequest("ref-2", PROMPT, greedy(N)))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    new = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    turn = asyncio.create_task(worker._routed_turn(router, PROMPT, greedy(N)))
    await started(engine, router)
    await engine.update_weights.remote(WeightUpdate(old + 1, state_dict_to_chunks(new, 64 << 20)))
    res = await asyncio.wait_for(turn, 120)
    n, k = len(res.token_ids), res.versions.count(old)
    assert 0 < k < n and res.versions == [old] * k + [old + 1] * (n - k)   # paused, resumed under v + 1
    assert res.token_ids[:k] == ref.token_ids[:k]                          # earlier tokens intact
    assert res.logprobs[:k] == pytest.approx(ref.logprobs[:k], abs=1e-3)
    # the tokens after the update come from the new weights (other tokens or other log-probs)
    assert res.token_ids[k:] != ref.token_ids[k:n] or res.logprobs[k:] != pytest.approx(ref.logprobs[k:n], abs=1e-3)


def turns_of(traj):
    """The trajectory's generated segments as recorded turns (context digest + tokens)."""
    turns, i, ids = [], 0, traj.token_ids
    while i < len(ids):
        if traj.loss_mask[i]:
            j = i
            while j < len(ids) and traj.loss_mask[j]:
                j += 1
            result = GenerationResult("t", ids[i:j], traj.logprobs[i:j], traj.versions[i:j], "stop")
            turns.append((j, RecordedTurn(context_digest(ids[:i]), result)))
            i = j
        else:
            i += 1
    return turns


class TurnCounterEnv(AgentEnv):
    """Deterministic multi-turn environment: whatever the model says, it answers with the turn
    number until max_turns (an untrained model's junk would end a calculator episode at once)."""

    def make_task(self, seed, options):
        self.count = 0
        return Task(f"count-{seed}", [Message("user", f"count from {seed}")])

    async def astep(self, action):
        self.count += 1
        return StepResult([Message("user", f"turn {self.count}")], 0.0, False, False, StepInfo())


def counter_worker(tiny_llama_dir, worker_id):
    try:
        register_env("turn_counter_test")(TurnCounterEnv)
    except ValueError:
        pass  # registered by the other test of this module
    limits = LoopLimits(max_turns=3, max_total_tokens=400, max_new_tokens=8)
    envs = (env_config(EnvEntrySpec(name="turn_counter_test")),)
    return EnvWorker(WorkerConfig(str(tiny_llama_dir), envs, limits, worker_id=worker_id))


async def test_running_episode_reports_its_finished_turns(engine, tiny_llama_dir):
    worker = counter_worker(tiny_llama_dir, 9)
    task = asyncio.create_task(worker.rollout(Episode("turn_counter_test", 11, "g", 0), engine,
                                              SamplingParams(temperature=1.0, max_tokens=8)))
    seen = []
    while not task.done():
        seen += [p for p in worker.partials() if p.turns]
        await asyncio.sleep(0.002)
    traj = task.result()
    assert worker.partials() == []                    # nothing left once the episode ended
    assert seen and traj.num_turns == 3
    final = [key(t) for _, t in turns_of(traj)]
    for partial in seen:
        assert (partial.group_id, partial.sample) == ("g", 0)
        assert [key(t) for t in partial.turns] == final[:len(partial.turns)]


def key(turn):
    r = turn.result
    return turn.context_digest, r.token_ids, r.logprobs, r.versions


async def test_restarted_episode_replays_its_prefix_and_generates_only_the_rest(engine, tiny_llama_dir):
    worker = counter_worker(tiny_llama_dir, 10)
    sampling = SamplingParams(temperature=1.0, max_tokens=8)
    episode = Episode("turn_counter_test", 12, "g", 1)
    first = await worker.rollout(episode, engine, sampling)
    turns = turns_of(first)
    assert first.num_turns == len(turns) == 3
    end, prefix = turns[-2][0], tuple(t for _, t in turns[:-1])
    before = (await engine.load.remote()).generated_tokens
    second = await worker.rollout(episode, engine, sampling, prefix)
    generated = (await engine.load.remote()).generated_tokens - before
    assert worker.replayed == len(prefix)
    assert second.token_ids[:end] == first.token_ids[:end]
    assert second.logprobs[:end] == first.logprobs[:end] and second.versions[:end] == first.versions[:end]
    assert second.loss_mask[:end] == first.loss_mask[:end]
    assert generated == second.num_generated - sum(len(t.result.token_ids) for t in prefix) > 0
