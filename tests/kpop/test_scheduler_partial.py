"""Partial rollouts with a real vLLM engine: a turn interrupted mid-generation keeps its tokens.

- preempt and resume from prefix: a request aborted on its engine (what tail migration and engine
  failover do) is resumed by the worker from `prompt + partial tokens`; the result equals the
  uninterrupted greedy generation token for token, with matching log-probs;
- across a weight update (the step boundary): the in-flight turn is frozen (pause "keep"), resumed
  under the new version, and keeps every earlier token with its original version.
"""

import asyncio

import pytest
import torch
from kpop.rollout.agent_loop import LoopLimits
from kpop.rollout.engine import GenerationRequest, SamplingParams, WeightUpdate
from kpop.rollout.env_worker import EnvWorker

from kpop.scheduler.router import EngineRouter

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
    worker = EnvWorker(str(tiny_llama_dir), [], LoopLimits(), worker_id=7)
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
    from kpop.rollout.weight_sync import state_dict_to_chunks
    from transformers import AutoModelForCausalLM

    router = EngineRouter.remote([engine])
    worker = EnvWorker(str(tiny_llama_dir), [], LoopLimits(), worker_id=8)
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
