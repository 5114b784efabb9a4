"""Token sampling for a batch of requests with their own parameters and random streams.

Contract:
- `sample(logits, params, generators)` returns one token and its log-prob per row. The log-prob
  is the raw one, `log_softmax(logits.float())` at the sampled token, before temperature, top-k
  and top-p (vLLM's `raw_logprobs`): what a learner recomputes with a plain forward pass.
- Temperature 0 is greedy (argmax of the logits; ties go to the lowest id, as `torch.argmax`).
- Otherwise the row's logits are divided by the temperature, restricted to the top-k (k <= 0 or
  k >= V: no restriction) and then to the smallest set of most likely tokens whose probability
  reaches top-p (the most likely token is always kept), and a token is drawn by the Gumbel-max
  trick with noise from the row's own `torch.Generator`. A row's draw depends only on its logits,
  parameters and generator, never on the other rows: batching does not change what is sampled.
"""

from __future__ import annotations

import torch

from kpop.rollout.engine import SamplingParams


def new_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)


def filtered_logits(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Temperature, top-k and top-p applied row-wise to float logits [B, V]; removed tokens are -inf."""
    V = logits.shape[1]
    temps = torch.tensor([max(p.temperature, 1e-6) for p in params], dtype=logits.dtype)
    scaled = logits / temps[:, None]
    ks = [p.top_k if 0 < p.top_k < V else V for p in params]
    tops = [p.top_p for p in params]
    if all(k == V for k in ks) and all(t >= 1.0 for t in tops):
        return scaled
    sorted_vals, order = scaled.sort(-1, descending=True)
    rank = torch.arange(V)[None, :]
    sorted_vals = sorted_vals.masked_fill(rank >= torch.tensor(ks)[:, None], float("-inf"))
    probs = sorted_vals.softmax(-1)
    before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
    drop = (before >= torch.tensor(tops, dtype=probs.dtype)[:, None]) & (rank > 0)
    sorted_vals = sorted_vals.masked_fill(drop, float("-inf"))
    return torch.full_like(scaled, float("-inf")).scatter(1, order, sorted_vals)


def sample(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]
) -> tuple[list[int], list[float]]:
    """One token per row of `logits` [B, V]; returns (token ids, raw log-probs)."""
    logits = logits.float().cpu()
    logp = torch.log_softmax(logits, -1)
    tokens = logits.argmax(-1)
    rows = [i for i, p in enumerate(params) if p.temperature > 0]
    if rows:
        filt = filtered_logits(logits[rows], [params[i] for i in rows])
        uniform = torch.stack([torch.rand(logits.shape[1], generator=generators[i]) for i in rows])
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
        tokens[rows] = (filt + gumbel).argmax(-1)
    chosen = logp.gather(1, tokens[:, None])[:, 0]
    return tokens.tolist(), chosen.tolist()
