"""The process's torch thread: one OS thread for every caller, inline re-entry, the caller's
thread count; and the built-in engine doing all of its torch work (load, steps, weight staging and
commit) there."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from kpop.rollout.builtin import torch_thread
from kpop.rollout.builtin.tiny_models import tiny_hybrid_dir
from kpop.rollout.builtin_engine import BuiltinEngine
from kpop.rollout.engine import GenerationRequest, SamplingParams, WeightUpdate
from kpop.rollout.weight_sync import state_dict_to_chunks


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_every_caller_gets_the_same_thread_and_its_result():
    here = threading.get_ident()
    main_side = torch_thread.call(threading.get_ident)
    with ThreadPoolExecutor(2) as pool:
        other_side = pool.submit(torch_thread.call, threading.get_ident).result()
    assert main_side == other_side != here
    assert torch_thread.call(lambda a, b, *, c: a * b + c, 6, 7, c=1) == 43


def test_exceptions_reach_the_caller():
    def boom():
        raise KeyError("from the torch thread")

    with pytest.raises(KeyError, match="from the torch thread"):
        torch_thread.call(boom)
    assert torch_thread.call(lambda: "still serving") == "still serving"


def test_a_call_from_the_thread_itself_runs_inline():
    def outer():
        return threading.get_ident(), torch_thread.call(threading.get_ident), torch_thread.on_torch_thread()

    outer_id, inner_id, flag = torch_thread.call(outer)
    assert outer_id == inner_id and flag
    assert not torch_thread.on_torch_thread()


def test_the_thread_follows_the_callers_thread_count(restore_threads):
    torch.set_num_threads(1)
    assert torch_thread.call(torch.get_num_threads) == 1
    torch.set_num_threads(2)
    assert torch_thread.call(torch.get_num_threads) == 2


async def test_run_awaits_without_blocking_the_loop():
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.ensure_future(ticker())
    result = await torch_thread.run(lambda: (threading.Event().wait(0.1), threading.get_ident())[1])
    task.cancel()
    assert result == torch_thread.call(threading.get_ident)
    assert ticks > 5  # the loop kept running while the thread worked


async def test_the_engine_does_all_its_torch_work_on_the_thread(tmp_path, monkeypatch, restore_threads):
    import kpop.rollout.builtin_engine as engine_module

    torch.set_num_threads(1)
    seen: dict[str, set[int]] = {}

    def spy(owner, name):
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            seen.setdefault(name, set()).add(threading.get_ident())
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapped)

    spy(engine_module, "load_model")
    engine = BuiltinEngine(tiny_hybrid_dir(tmp_path / "m", seed=0), max_batch=2)
    spy(engine.scheduler.adapter, "decode")
    spy(engine.scheduler.adapter, "prefill")
    spy(engine.weights, "stage")
    spy(engine.weights, "commit")
    sp = SamplingParams(temperature=0, max_tokens=6)
    await engine.generate(GenerationRequest("a", [1, 2, 3], sp))
    state = dict(engine.model.state_dict())
    await engine.update_weights(WeightUpdate(1, state_dict_to_chunks(state, max_chunk_bytes=64_000)))
    await engine.generate(GenerationRequest("b", [1, 2, 3], sp))
    await engine.close()
    worker = torch_thread.call(threading.get_ident)
    assert set(seen) == {"load_model", "decode", "prefill", "stage", "commit"}
    assert all(ids == {worker} for ids in seen.values()), seen
