"""zlib compression-ratio repetition penalty (Ling-2.6 agentic RL).

ratio = len(utf-8 bytes) / len(zlib-compressed bytes); ordinary prose compresses about 2-3x,
looping output far more. Below `min_chars` the ratio is too noisy to judge and the penalty is 0.
Above `threshold` the penalty grows linearly and saturates at `-weight` for ratio >= 2 * threshold.
"""

from __future__ import annotations

import zlib


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8", "replace")
    if not raw:
        return 1.0
    return len(raw) / len(zlib.compress(raw, 9))


def repetition_penalty(text: str, threshold: float = 4.0, weight: float = 0.5, min_chars: int = 200) -> float:
    if len(text) < min_chars:
        return 0.0
    ratio = compression_ratio(text)
    if ratio <= threshold:
        return 0.0
    return -weight * min(1.0, (ratio - threshold) / threshold)
