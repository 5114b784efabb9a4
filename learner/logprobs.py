"""Per-token log-probs of a causal LM: log π(input_ids[:, t+1] | input_ids[:, :t+1]).

The LM head output is upcast to FP32 before the softmax (a mismatch reducer: the engine does the
same), so trainer and engine agree as closely as the kernels allow. `token_and_mtp_logprobs` takes
the same log-probs and, from the same forward, those of the model's multi-token-prediction layers
(a hybrid model with MTP layers; kpop.learner.objectives.mtp).
"""

from __future__ import annotations

import torch


def _picked(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    targets = input_ids[:, 1:]
    return torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return _picked(model(input_ids=input_ids, attention_mask=attention_mask).logits, input_ids)


def token_and_mtp_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           mtp_grad: str) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, T-1] next-token log-probs, [D, B, T-1] MTP log-probs in the same layout); mtp_grad
    "all" or "layers" (what the MTP log-probs' gradient reaches: kpop.models.hybrid.modeling)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, mtp_logprobs=mtp_grad)
    return _picked(out.logits, input_ids), out["mtp_logprobs"]
