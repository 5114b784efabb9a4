"""BuiltinEngine outputs against independent references, on the tiny hybrid and a tiny Llama.

References: argmax decoding by full forward passes (no cache) of the same model in fp32, and the
trainer's `token_logprobs` recomputation. Batched requests have ragged prompt lengths, so the
left-padded MLA latent / KV caches and per-row positions are exercised.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from kpop.learner.logprobs import token_logprobs
from kpop.rollout.builtin.tiny_models import tiny_hybrid_dir, tiny_llama_dir
from kpop.rollout.builtin.weights import load_model
from kpop.rollout.builtin_engine import BuiltinEngine
from kpop.rollout.engine import GenerationRequest, SamplingParams

PROMPTS = [[3, 17, 29, 4, 8], [250, 11], [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7], [100], [42, 43, 44, 45]]
LOGPROB_TOL = 1e-4


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared, loaded machine: one intra-op thread is 10x faster than spinning two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def hybrid_dir(tmp_path_factory):
    return tiny_hybrid_dir(tmp_path_factory.mktemp("hybrid"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tiny_llama_dir(tmp_path_factory.mktemp("llama"))


@torch.no_grad()
def argmax_decode(model, prompt: list[int], n: int, eos: frozenset[int] = frozenset()) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        if ids[-1] in eos:
            break
    return ids[len(prompt):]


async def _generate_all(engine, prompts, sp, prefix="r"):
    return await asyncio.gather(*(engine.generate(GenerationRequest(f"{prefix}{i}", p, sp)) for i, p in enumerate(prompts)))


@pytest.mark.parametrize("which", ["hybrid", "llama"])
async def test_greedy_equals_full_forward_argmax(which, hybrid_dir, llama_dir):
    model_dir = hybrid_dir if which == "hybrid" else llama_dir
    engine = BuiltinEngine(model_dir, max_batch=3)  # 5 ragged requests: admissions mid-flight
    ref = load_model(model_dir)
    results = await _generate_all(engine, PROMPTS, SamplingParams(temperature=0, max_tokens=12))
    for prompt, res in zip(PROMPTS, results):
        assert res.token_ids == argmax_decode(ref, prompt, 12, engine.eos_ids)
        assert res.finish_reason == ("stop" if res.token_ids[-1] in engine.eos_ids else "length")
        assert res.versions == [0] * len(res.token_ids)
    assert engine.load().running == 0 and engine.cache_nbytes() == 0
    await engine.close()


@pytest.mark.parametrize("which", ["hybrid", "llama"])
async def test_logprobs_match_trainer_recomputation(which, hybrid_dir, llama_dir):
    model_dir = hybrid_dir if which == "hybrid" else llama_dir
    engine = BuiltinEngine(model_dir, max_batch=8)
    ref = load_model(model_dir)
    sp = SamplingParams(temperature=1.0, max_tokens=16, seed=3)
    results = await _generate_all(engine, PROMPTS, sp)
    worst = 0.0
    for prompt, res in zip(PROMPTS, results):
        ids = torch.tensor([prompt + res.token_ids])
        with torch.no_grad():
            lp = token_logprobs(ref, ids, torch.ones_like(ids))[0, len(prompt) - 1:]
        worst = max(worst, (lp - torch.tensor(res.logprobs)).abs().max().item())
    print(f"\n[{which}] max |engine logprob - token_logprobs| = {worst:.3g}")
    assert worst < LOGPROB_TOL
    await engine.close()


async def test_continuous_batching_equals_one_at_a_time(hybrid_dir):
    engine = BuiltinEngine(hybrid_dir, max_batch=3)
    params = [SamplingParams(temperature=0.8, top_k=40, top_p=0.9, max_tokens=8 + 3 * i, seed=10 + i) for i in range(5)]
    reqs = [GenerationRequest(f"b{i}", p, sp) for i, (p, sp) in enumerate(zip(PROMPTS, params))]
    first = [asyncio.ensure_future(engine.generate(r)) for r in reqs[:2]]
    while engine.load().generated_tokens < 4:  # later requests join a running batch
        await asyncio.sleep(0.01)
    batched = await asyncio.gather(*first, *(engine.generate(r) for r in reqs[2:]))
    for req, got in zip(reqs, batched):
        alone = await engine.generate(GenerationRequest("solo-" + req.request_id, req.prompt_ids, req.sampling))
        assert got.token_ids == alone.token_ids
        assert torch.allclose(torch.tensor(got.logprobs), torch.tensor(alone.logprobs), atol=1e-5)
        assert len(got.token_ids) == req.sampling.max_tokens and got.finish_reason == "length"
    await engine.close()


async def test_stop_token_ids_and_max_tokens(hybrid_dir):
    engine = BuiltinEngine(hybrid_dir)
    greedy = (await engine.generate(GenerationRequest("g", PROMPTS[0], SamplingParams(temperature=0, max_tokens=10)))).token_ids
    stop_at = next(i for i, t in enumerate(greedy) if i >= 2 and t not in greedy[:i])
    sp = SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[greedy[stop_at]])
    res = await engine.generate(GenerationRequest("s", PROMPTS[0], sp))
    assert res.token_ids == greedy[: stop_at + 1] and res.finish_reason == "stop"  # the stop token is kept
    assert len(res.logprobs) == len(res.versions) == stop_at + 1
    res = await engine.generate(GenerationRequest("m", PROMPTS[0], SamplingParams(temperature=0, max_tokens=3)))
    assert res.token_ids == greedy[:3] and res.finish_reason == "length"
    await engine.close()


async def test_stop_strings_end_at_the_completing_token(tmp_path):
    model_dir = tiny_llama_dir(tmp_path, with_tokenizer=True)
    engine = BuiltinEngine(model_dir)
    tok = engine.tokenizer
    prompt = tok.encode("the quick brown fox")
    sp = SamplingParams(temperature=1.0, max_tokens=16, seed=1)  # seeded: the same draws with and without stops
    full = (await engine.generate(GenerationRequest("g", prompt, sp))).token_ids
    texts = [tok.decode(full[: i + 1], skip_special_tokens=True) for i in range(len(full))]
    k = next(i for i in range(len(full) // 2, len(full)) if len(texts[i]) > len(texts[i - 1]))
    stop = texts[k][len(texts[k - 1]):][-1:]  # the last character the k-th token adds
    end = next(i for i, t in enumerate(texts) if stop in t)
    res = await engine.generate(GenerationRequest("s", prompt, SamplingParams(**{**sp.__dict__, "stop": [stop]})))
    assert res.token_ids == full[: end + 1] and res.finish_reason == "stop"
    assert end + 1 < len(full)  # the stop string really cut the output short
    await engine.close()


async def test_stop_strings_without_tokenizer_are_refused(hybrid_dir):
    engine = BuiltinEngine(hybrid_dir)
    with pytest.raises(ValueError, match="tokenizer"):
        await engine.generate(GenerationRequest("x", [1, 2], SamplingParams(stop=["a"])))
    await engine.close()
