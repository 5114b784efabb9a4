"""Fold a per-head QK-norm into the q/k projections with calibration statistics.

MLA layers have no QK-norm, so a converted layer replaces the data-dependent normalisation
`gamma * q / rms(q)` by a constant: for each head,

    W_q_hat = diag(gamma_Q) W_q / sqrt( mean over N calibration tokens and d dims of q^2 + eps )

(same for K). Exact for tokens whose q-RMS equals the calibration mean; elsewhere the score of a
(query, key) pair is scaled by (rms_cal_q / rms_q)(rms_cal_k / rms_k). Shapes: W [heads * d, hidden],
gamma [d], hidden states X [N, hidden] (the attention input, i.e. after input_layernorm).
"""

from __future__ import annotations

import torch


def head_rms(weight: torch.Tensor, x: torch.Tensor, heads: int, bias: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """sqrt(mean over tokens and head dims of (W x + b)^2 + eps), one value per head: [heads]."""
    y = x.double() @ weight.double().T
    if bias is not None:
        y = y + bias.double()
    return (y.view(x.shape[0], heads, -1).pow(2).mean(dim=(0, 2)) + eps).sqrt()


def fold_qk_norm(weight: torch.Tensor, gamma: torch.Tensor, x: torch.Tensor, heads: int, bias: torch.Tensor | None = None, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor | None]:
    rms = head_rms(weight, x, heads, bias, eps)
    scale = (gamma.double()[None, :] / rms[:, None]).reshape(-1, 1)  # [heads * d, 1]
    new_w = (weight.double() * scale).to(weight.dtype)
    new_b = None if bias is None else (bias.double() * scale[:, 0]).to(bias.dtype)
    return new_w, new_b
