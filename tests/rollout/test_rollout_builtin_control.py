"""BuiltinEngine control paths: abort frees state, pause -> update -> resume, rejected updates.

The weights a request is continued with are checked against an independent reference: argmax
decoding by full forward passes of a model holding the new weights.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from kpop.rollout.builtin.tiny_models import tiny_hybrid, tiny_hybrid_dir
from kpop.rollout.builtin_engine import BuiltinEngine
from kpop.rollout.engine import GenerationRequest, SamplingParams, WeightUpdate
from kpop.rollout.weight_sync import WeightSyncError, state_dict_to_chunks

GREEDY = SamplingParams(temperature=0, max_tokens=16)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared, loaded machine: one intra-op thread is 10x faster than spinning two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def hybrid_dir(tmp_path_factory):
    return tiny_hybrid_dir(tmp_path_factory.mktemp("hybrid"), seed=0)


@torch.no_grad()
def argmax_continue(model, context: list[int], n: int) -> list[int]:
    ids = list(context)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(context):]


def update_from(model, version: int) -> WeightUpdate:
    state = {k: v for k, v in model.state_dict().items()}
    return WeightUpdate(version, state_dict_to_chunks(state, max_chunk_bytes=64_000))


async def _wait_until(cond, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_abort_frees_the_request_state(hybrid_dir):
    engine = BuiltinEngine(hybrid_dir, max_batch=1)
    sp = SamplingParams(temperature=0, max_tokens=400)
    running = asyncio.ensure_future(engine.generate(GenerationRequest("long", [1, 2, 3], sp)))
    queued = asyncio.ensure_future(engine.generate(GenerationRequest("queued", [4, 5], sp)))
    await _wait_until(lambda: engine.load().generated_tokens >= 3)
    assert engine.load().running == 1 and engine.load().waiting == 1 and engine.cache_nbytes() > 0
    await engine.abort("queued")
    assert engine.load().waiting == 0 and engine.load().running == 1
    await engine.abort("long")
    assert engine.load().running == 0 and engine.cache_nbytes() == 0  # freed before abort() returns
    long_res, queued_res = await asyncio.gather(running, queued)
    assert long_res.finish_reason == "abort" and 3 <= len(long_res.token_ids) < 400
    assert queued_res.finish_reason == "abort" and queued_res.token_ids == []
    # A cancelled consumer frees its request too.
    task = asyncio.ensure_future(engine.generate(GenerationRequest("cancelled", [1, 2], sp)))
    await _wait_until(lambda: engine.load().running == 1)
    task.cancel()
    await _wait_until(lambda: engine.load().running == 0 and engine.cache_nbytes() == 0)
    await engine.close()


async def test_pause_update_resume_continues_under_new_weights(hybrid_dir):
    engine = BuiltinEngine(hybrid_dir, max_batch=4)
    old, new = tiny_hybrid(seed=0), tiny_hybrid(seed=1)
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14]]
    tasks = [asyncio.ensure_future(engine.generate(GenerationRequest(f"p{i}", p, GREEDY))) for i, p in enumerate(prompts)]
    await _wait_until(lambda: engine.load().generated_tokens >= 4)
    await engine.pause()
    frozen = engine.load()
    await asyncio.sleep(0.2)
    assert engine.load().generated_tokens == frozen.generated_tokens and frozen.paused and frozen.running == 2
    await engine.update_weights(update_from(new, version=1))
    assert engine.load().version == 1 and engine.load().running + engine.load().waiting == 2
    await engine.resume()
    for prompt, res in zip(prompts, await asyncio.gather(*tasks)):
        n_old = res.versions.count(0)
        assert res.versions == [0] * n_old + [1] * (16 - n_old) and 2 <= n_old < 16
        assert res.token_ids[:n_old] == argmax_continue(old, prompt, n_old)
        assert res.token_ids[n_old:] == argmax_continue(new, prompt + res.token_ids[:n_old], 16 - n_old)
    await engine.close()


async def test_rejected_updates_keep_the_old_version_serving(hybrid_dir):
    engine = BuiltinEngine(hybrid_dir)
    old = tiny_hybrid(seed=0)
    expect = argmax_continue(old, [1, 2, 3], 6)
    bad_shape = {k: v for k, v in tiny_hybrid(seed=1).state_dict().items()}
    bad_shape["lm_head.weight"] = bad_shape["lm_head.weight"][:-1]
    missing = {k: v for k, v in tiny_hybrid(seed=1).state_dict().items() if k != "model.norm.weight"}
    for state in (bad_shape, missing):
        with pytest.raises(WeightSyncError):
            await engine.update_weights(WeightUpdate(5, state_dict_to_chunks(state, 64_000)))
    with pytest.raises(WeightSyncError, match="timed out"):
        await engine.update_weights(update_from(tiny_hybrid(seed=1), 5), timeout_s=0)
    assert engine.load().version == 0 and not engine.load().paused
    res = await engine.generate(GenerationRequest("after", [1, 2, 3], SamplingParams(temperature=0, max_tokens=6)))
    assert res.token_ids == expect and res.versions == [0] * 6
    await engine.close()


async def test_update_while_running_applies_between_steps(hybrid_dir):
    engine = BuiltinEngine(hybrid_dir)
    new = tiny_hybrid(seed=2)
    update = update_from(new, version=7)  # built first: on a loaded machine building it outlasted 16 tokens
    n = 256  # a tiny model's step is ~1 ms: 64 tokens could all come out before the update was staged
    task = asyncio.ensure_future(engine.generate(GenerationRequest("r", [3, 4], SamplingParams(temperature=0, max_tokens=n))))
    await _wait_until(lambda: engine.load().generated_tokens >= 2)
    await engine.update_weights(update)  # not paused: applied between two steps
    res = await task
    n_old = res.versions.count(0)
    assert res.versions == [0] * n_old + [7] * (n - n_old) and n_old < n
    assert res.token_ids[n_old:] == argmax_continue(new, [3, 4] + res.token_ids[:n_old], n - n_old)
    await engine.close()


async def test_waiting_requests_start_by_priority_then_arrival(hybrid_dir):
    """max_batch 1: requests queued behind a paused engine run one at a time, lowest priority value
    first, ties in arrival order (the contract the vLLM engine keeps with its "priority" policy)."""
    engine = BuiltinEngine(hybrid_dir, max_batch=1)
    await engine.pause()
    sp = SamplingParams(temperature=0, max_tokens=3)
    finished: list[str] = []

    async def run(rid: str, priority: int) -> None:
        await engine.generate(GenerationRequest(rid, [1, 2, 3], sp, priority=priority))
        finished.append(rid)

    tasks = [asyncio.ensure_future(run(rid, p)) for rid, p in (("a", 5), ("b", 1), ("c", 5), ("d", 0), ("e", 1))]
    await _wait_until(lambda: engine.load().waiting == 5)
    await engine.resume()
    await asyncio.gather(*tasks)
    await engine.close()
    assert finished == ["d", "b", "e", "a", "c"]
