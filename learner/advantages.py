"""Group-normalised advantages (GRPO family).

For the G samples of one task: A_i = (R_i - mean_G R) / (std_G R + eps) (or without the division
when `normalize_std` is off). A group whose rewards are all equal carries no signal: A_i = 0.
The std is the population std of the group (divide by G), as in the GRPO and LPO papers.
"""

from __future__ import annotations

from collections import defaultdict

import torch


def group_advantages(rewards: torch.Tensor, group_ids: list[str], normalize_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    if rewards.shape[0] != len(group_ids):
        raise ValueError("one group id per reward is required")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(group_ids):
        members[g].append(i)
    adv = torch.zeros_like(rewards, dtype=torch.float32)
    for rows in members.values():
        r = rewards[rows].float()
        centred = r - r.mean()
        if normalize_std:
            std = r.std(unbiased=False)
            centred = centred / (std + eps) if std > 0 else torch.zeros_like(centred)
        adv[rows] = centred
    return adv
