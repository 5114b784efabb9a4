"""EngineActor: the vLLM engine inside a Ray actor (engine-core subprocess spawned from the actor),
on the shared Ray session, checked against transformers like the in-process engine tests."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from kpop.rollout.engine import GenerationRequest, SamplingParams, WeightUpdate
from kpop.rollout.weight_sync import WeightSyncError, state_dict_to_chunks
from kpop.spec.model import LlamaModelSpec

PROMPT = [0, 5, 6, 7]
LOGPROB_TOL = 2e-4

# Engine mechanics need long greedy generations from a random model; at the quickstart's init
# std (0.06) a random model may emit EOS within a few tokens, at 0.02 it does not.
RANDOM_MODEL = LlamaModelSpec(init_std=0.02)


@pytest.fixture(scope="module")
def model_dir(request, tmp_path_factory) -> Path:
    """The shared tokenizer (if any) with the default LlamaModelSpec sizes: vLLM's CPU attention
    needs a head size of at least 32, which the shared `tiny_llama_dir` may not have."""
    from kpop.models.tiny_llama import build_tiny_llama
    from kpop.models.tokenizer import train_tokenizer
    from kpop.rollout.vllm_engine import check_model_supported

    out = tmp_path_factory.mktemp("tiny_llama_actor")
    try:
        shared = Path(request.getfixturevalue("tiny_llama_dir"))
    except pytest.FixtureLookupError:
        texts = [f"the quick brown fox jumps over {i} lazy dogs; 1+{i}={i + 1}" for i in range(300)]
        return build_tiny_llama(RANDOM_MODEL, train_tokenizer(texts, 320, out), out, seed=0)
    try:
        check_model_supported(shared)
        return shared
    except ValueError:
        from transformers import AutoTokenizer

        return build_tiny_llama(RANDOM_MODEL, AutoTokenizer.from_pretrained(str(shared)), out, seed=0)


@pytest.fixture(scope="module")
def hf(model_dir):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


@torch.no_grad()
def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


@torch.no_grad()
def hf_logprobs(model, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    lp = torch.log_softmax(model(torch.tensor([prompt + tokens])).logits[0].float(), -1)
    return lp[torch.arange(len(prompt) - 1, len(prompt) - 1 + len(tokens)), torch.tensor(tokens)]


@pytest.fixture(scope="module")
def actor(ray_session, model_dir):
    from kpop.rollout.engine_actor import EngineActor
    from kpop.rollout.vllm_engine import VLLMEngineConfig

    ray = ray_session
    config = VLLMEngineConfig(model_dir=str(model_dir), kv_cache_gib=0.25, max_model_len=512)
    t0 = time.perf_counter()
    handle = EngineActor.options(num_cpus=1).remote(config)
    engine_s = ray.get(handle.start.remote(), timeout=600)
    print(f"\nEngineActor start-up: {time.perf_counter() - t0:.1f} s (vLLM engine {engine_s:.1f} s)")
    yield handle
    ray.get(handle.close.remote(), timeout=120)
    ray.kill(handle)


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n)


def wait_until(ray, cond, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.005)


def test_actor_generates_like_hf_and_streams(ray_session, actor, hf):
    ray = ray_session
    res = ray.get(actor.generate.remote(GenerationRequest("a-greedy", PROMPT, greedy(20))), timeout=120)
    assert res.token_ids == hf_greedy(hf, PROMPT, 20) and res.versions == [0] * 20
    assert (torch.tensor(res.logprobs) - hf_logprobs(hf, PROMPT, res.token_ids)).abs().max().item() < LOGPROB_TOL
    deltas = [ray.get(ref) for ref in actor.stream.remote(GenerationRequest("a-stream", PROMPT, greedy(20)))]
    assert len(deltas) >= 2 and [t for d in deltas for t in d.token_ids] == res.token_ids


def test_actor_abort(ray_session, actor):
    ray = ray_session
    ref = actor.generate.remote(GenerationRequest("a-abort", PROMPT, greedy(400)))
    wait_until(ray, lambda: ray.get(actor.load.remote()).running == 1)
    ray.get(actor.abort.remote("a-abort"))
    res = ray.get(ref, timeout=60)
    assert res.finish_reason == "abort" and len(res.token_ids) < 400
    assert ray.get(actor.load.remote()).running == 0


def test_actor_pause_update_resume_and_rejected_update(ray_session, actor, hf):
    ray = ray_session
    old = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    g = torch.Generator().manual_seed(7)
    new = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in old.items()}
    n = 64
    ref = actor.generate.remote(GenerationRequest("a-flight", PROMPT, greedy(n)))
    wait_until(ray, lambda: ray.get(actor.load.remote()).running == 1)
    ray.get(actor.pause.remote())
    update_s = ray.get(actor.update_weights.remote(WeightUpdate(1, state_dict_to_chunks(new, 200_000))), timeout=120)
    print(f"\nweight update through the actor: {update_s * 1e3:.0f} ms")
    load = ray.get(actor.load.remote())
    assert load.version == 1 and load.paused
    ray.get(actor.resume.remote())
    res = ray.get(ref, timeout=120)
    k = res.versions.index(1)
    assert 0 < k and res.versions == [0] * k + [1] * (n - k)
    hf.load_state_dict(new)
    try:
        assert res.token_ids[k:] == hf_greedy(hf, PROMPT + res.token_ids[:k], n - k)
        bad = {**new, "model.norm.weight": new["model.norm.weight"][:-1]}
        with pytest.raises(WeightSyncError, match="shape"):
            ray.get(actor.update_weights.remote(WeightUpdate(2, state_dict_to_chunks(bad, 200_000))), timeout=120)
        assert ray.get(actor.load.remote()).version == 1
        after = ray.get(actor.generate.remote(GenerationRequest("a-new", PROMPT, greedy(16))), timeout=120)
        assert after.token_ids == hf_greedy(hf, PROMPT, 16) and after.versions == [1] * 16
    finally:
        hf.load_state_dict(old)
