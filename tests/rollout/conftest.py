"""Fixtures shared by the built-in engine's tests: a thread-count parameter, tiny models by name,
and a one-row decode checked step by step against the model's full forward."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """torch's thread count for the test (the native kernels take theirs from it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _tiny_model(which: str):
    """"hybrid", "hybrid-qlora" (MLA queries through a low-rank pair), "llama" or "qwen3" (q/k
    norms): 2-layer Llama/Qwen3 with 4 query heads over 2 key/value heads of 16."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    from kpop.rollout.builtin.tiny_models import tiny_hybrid

    if which.startswith("hybrid"):
        return tiny_hybrid(seed=0, **({"q_lora_rank": 12} if which == "hybrid-qlora" else {}))
    cls = Qwen3Config if which == "qwen3" else LlamaConfig
    torch.manual_seed(0)
    config = cls(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=128, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture
def tiny_model():
    return _tiny_model


def _decode_one_row(adapter, model, context: list[int], prompt: int, steps: int) -> None:
    """Prefill `prompt` tokens of `context`, then decode one row for `steps` tokens, each step's
    logits equal (1e-4) to the full forward's over the context so far."""
    from kpop.rollout.builtin.slots import CacheSpec, SlotCache

    with torch.inference_mode():
        _, state = adapter.prefill(torch.tensor([context[:prompt]]))
        specs = [CacheSpec(tuple(t.shape[1:]), d, t.dtype) for t, d in zip(state, adapter.col_dims)]
        cache = SlotCache(specs, max_rows=1, max_cols=64)
        cache.ensure(1, prompt + steps)
        cache.write_rows(0, state)
        for n in range(prompt, prompt + steps):
            logits = adapter.decode(cache.tensors, torch.tensor([n]), n, torch.tensor([context[n]]))
            want = model(torch.tensor([context[: n + 1]])).logits[0, -1]
            torch.testing.assert_close(logits[0], want, rtol=0, atol=1e-4)


@pytest.fixture
def decode_one_row():
    return _decode_one_row
