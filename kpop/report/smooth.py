"""Smoothing of per-step series for plots, as TensorBoard draws them.

`ema(values, weight)` is the debiased exponential moving average

    m_0 = 0,  m_t = weight * m_{t-1} + (1 - weight) * x_t,  s_t = m_t / (1 - weight^t)   (t = 1..n)

so the first point is x_1 itself (no pull towards 0), every point is a weighted mean of the points
up to it (weights (1 - w) w^(t-k), normalised), and weight 0 returns the series unchanged. Steps are
taken as evenly spaced (a run logs every step of a phase).
"""

from __future__ import annotations

DEFAULT_WEIGHT = 0.6   # TensorBoard's default smoothing


def ema(values: list[float], weight: float = DEFAULT_WEIGHT) -> list[float]:
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out, m, decay = [], 0.0, 1.0
    for x in values:
        m = weight * m + (1.0 - weight) * x
        decay *= weight
        out.append(m / (1.0 - decay))
    return out
