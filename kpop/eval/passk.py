"""The unbiased pass@k estimator (Chen et al., 2021, "Evaluating Large Language Models Trained on Code").

For a task with n samples of which c passed, the probability that at least one of k samples drawn
without replacement from those n passes is

    pass@k = 1 - C(n - c, k) / C(n, k)

computed as 1 - prod_{i = n - c + 1}^{n} (1 - k / i), which never forms large binomials. A
benchmark's pass@k is the mean over its tasks. Requires 0 <= c <= n and 1 <= k <= n.
"""

from __future__ import annotations


def pass_at_k(n: int, c: int, k: int) -> float:
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def mean_pass_at_k(counts: list[tuple[int, int]], k: int) -> float:
    """Mean pass@k over tasks given as (n samples, c correct) pairs; 0.0 for no tasks."""
    if not counts:
        return 0.0
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
