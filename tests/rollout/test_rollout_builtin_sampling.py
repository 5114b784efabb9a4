"""The built-in engine's sampler: greedy, raw log-probs, top-k/top-p support, per-row seeded streams."""

from __future__ import annotations

import torch

from kpop.rollout.builtin.sampling import filtered_logits, new_generator, sample
from kpop.rollout.engine import SamplingParams


def _logits() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(3, 50) * 3


def test_greedy_is_argmax_with_raw_logprob():
    logits = _logits()
    params = [SamplingParams(temperature=0)] * 3
    tokens, logprobs = sample(logits, params, [new_generator(i) for i in range(3)])
    assert tokens == logits.argmax(-1).tolist()
    expect = torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(logprobs), expect)


def test_logprob_is_unmodified_by_temperature_and_filters():
    logits = _logits()
    params = [SamplingParams(temperature=0.3, top_k=5, top_p=0.8, seed=1)] * 3
    tokens, logprobs = sample(logits, params, [new_generator(i) for i in range(3)])
    raw = torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(logprobs), raw)


def test_top_k_and_top_p_keep_exactly_the_allowed_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]))
    out = filtered_logits(logits, [SamplingParams(top_k=2), SamplingParams(top_p=0.8)])
    assert torch.isfinite(out[0]).tolist() == [True, True, False, False]
    # top-p 0.8: 0.5 and 0.3 reach 0.8; 0.15 is not needed.
    assert torch.isfinite(out[1]).tolist() == [True, True, False, False]
    out = filtered_logits(logits[:1], [SamplingParams(top_p=0.81)])
    assert torch.isfinite(out[0]).tolist() == [True, True, True, False]
    out = filtered_logits(logits[:1], [SamplingParams(top_p=0.01)])  # the most likely token always stays
    assert torch.isfinite(out[0]).tolist() == [True, False, False, False]


def test_sampling_frequencies_follow_the_tempered_distribution():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    gen = new_generator(7)
    draws = [sample(logits, [SamplingParams(temperature=1.0)], [gen])[0][0] for _ in range(3000)]
    freq = torch.bincount(torch.tensor(draws), minlength=3).float() / len(draws)
    assert torch.allclose(freq, torch.tensor([0.6, 0.3, 0.1]), atol=0.03)
    draws = [sample(logits, [SamplingParams(temperature=1.0, top_k=1)], [gen])[0][0] for _ in range(50)]
    assert set(draws) == {0}


def test_rows_do_not_influence_each_other():
    logits = _logits()
    p = SamplingParams(temperature=1.0)
    alone = sample(logits[1:2], [p], [new_generator(5)])[0]
    batched = sample(logits, [p, p, p], [new_generator(9), new_generator(5), new_generator(11)])[0]
    assert batched[1] == alone[0]
