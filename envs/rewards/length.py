"""Evo-CoT dynamic length reward over the G samples of one prompt.

With l_min, l_max the shortest and longest sample of the group:
    p(l) = 0.5 - (l - l_min) / (l_max - l_min + 1e-9)
    R_len = alpha * p(l)            if the sample is correct
    R_len = alpha * min(p(l), 0)    if it is wrong
so among correct samples shorter is better, and a wrong sample is never rewarded for length.
Lengths may be in any unit (tokens, characters) as long as a group uses one.
"""

from __future__ import annotations

from collections.abc import Sequence


def dynamic_length_rewards(lengths: Sequence[float], correct: Sequence[bool], alpha: float = 0.1) -> list[float]:
    if len(lengths) != len(correct):
        raise ValueError(f"{len(lengths)} lengths but {len(correct)} correctness flags")
    if not lengths:
        return []
    low, high = min(lengths), max(lengths)
    out = []
    for length, ok in zip(lengths, correct):
        p = 0.5 - (length - low) / (high - low + 1e-9)
        out.append(alpha * p if ok else alpha * min(p, 0.0))
    return out
