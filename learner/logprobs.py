"""Per-token log-probs of a causal LM: log π(input_ids[:, t+1] | input_ids[:, :t+1]).

The LM head output is upcast to FP32 before the softmax (a mismatch reducer: the engine does the
same), so trainer and engine agree as closely as the kernels allow.
"""

from __future__ import annotations

import torch


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
