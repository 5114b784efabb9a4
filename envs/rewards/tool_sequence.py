"""Agreement of a predicted tool-call sequence with a reference one (Ling-2.6 process reward).

A weighted longest common subsequence: a call with the same name and the same arguments counts
1.0, the same name with other arguments `name_only_credit`. Precision divides by the predicted
length (so unnecessary or exploratory calls cost), recall by the reference length; the result is
their F1, in [0, 1]. Two empty sequences agree fully. Arguments are compared as canonical JSON, so
key order does not matter.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

Call = tuple[str, dict[str, Any]]


def _canon(call: Call) -> tuple[str, str]:
    name, args = call
    return name, json.dumps(args, sort_keys=True, default=str)


def tool_sequence_agreement(predicted: Sequence[Call], reference: Sequence[Call], name_only_credit: float = 0.25) -> float:
    if not predicted and not reference:
        return 1.0
    if not predicted or not reference:
        return 0.0
    pred, ref = [_canon(c) for c in predicted], [_canon(c) for c in reference]
    # dp[i][j]: best weighted alignment of pred[:i] with ref[:j]
    dp = [[0.0] * (len(ref) + 1) for _ in range(len(pred) + 1)]
    for i, p in enumerate(pred, 1):
        for j, r in enumerate(ref, 1):
            match = 1.0 if p == r else (name_only_credit if p[0] == r[0] else 0.0)
            dp[i][j] = max(dp[i - 1][j], dp[i][j - 1], dp[i - 1][j - 1] + match)
    score = dp[-1][-1]
    if score == 0.0:
        return 0.0
    precision, recall = score / len(pred), score / len(ref)
    return 2 * precision * recall / (precision + recall)
