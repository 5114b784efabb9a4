"""Multi-token prediction (MTP): the auxiliary loss that trains a model's MTP layers.

A model with D MTP layers (the hybrid's `num_nextn_predict_layers`) predicts, at depth j, token
t + j + 2 from position t. On the tokens the step trains on (mask m: generated / target tokens,
laid out like Batch.loss_mask) the loss is the cross-entropy of every depth, averaged over depths:

    L_mtp = - 1/D · Σ_j Σ_i Σ_s m_is · 1[s >= j + 1] · log p_j(y_i,s+1) / N

with N the step's trained-token count over all ranks, so micro-batches sum to the batch's loss like
the main objective's. A target too early for depth j (s < j + 1: it would be predicted from before
the sequence) counts in N but adds 0; once every row's prompt is at least j + 2 tokens long, each
depth's term is its mean cross-entropy over the trained tokens (the model's own `mtp_loss` with the
other labels ignored). The learner adds w · L_mtp to the step's loss, w = the model config's
`mtp_loss_scaling_factor`.

Which steps train it, and how (kpop.learner.learner):
- "sft", "distill": teacher-forced on the targets, the gradient reaching the trunk as well (as in
  pre-training, where MTP densifies the training signal);
- "rl": on the sampled tokens of the rows the step trains on (every sign of advantage: the MTP
  layers learn to predict what the policy writes, the draft they serve for speculative decoding),
  with the trunk detached: only the MTP layers learn from it, so the policy-gradient update of
  the trunk is exactly the objective's (a likelihood term on the policy's own samples would sharpen
  it) while the MTP layers follow the trunk as RL moves it instead of drifting from it;
- "dpo": not trained (a preference step has no language-modelling target).
"""

from __future__ import annotations

import torch


def mtp_loss(mtp_logp: torch.Tensor, mask: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """mtp_logp: [D, B, T-1] (the hybrid model's `mtp_token_logprobs`); mask: [B, T-1]."""
    depths, _, width = mtp_logp.shape
    s = torch.arange(width, device=mtp_logp.device)
    predicted = (s[None, :] >= torch.arange(1, depths + 1, device=mtp_logp.device)[:, None]).to(mtp_logp.dtype)
    return -(mtp_logp * mask[None] * predicted[:, None, :]).sum() / (depths * max(num_tokens, 1))
