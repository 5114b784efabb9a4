"""The report's smoothing: TensorBoard's debiased EMA, checked against hand computation."""

import pytest

from kpop.report.smooth import ema


def test_ema_matches_hand_computation():
    # w = 0.5: m1 = 0.5*2 = 1 -> 1/(1-0.5) = 2; m2 = 0.5*1 + 0.5*4 = 2.5 -> 2.5/0.75 = 10/3;
    # m3 = 0.5*2.5 + 0.5*0 = 1.25 -> 1.25/0.875 = 10/7
    assert ema([2.0, 4.0, 0.0], 0.5) == pytest.approx([2.0, 10 / 3, 10 / 7])


def test_ema_is_a_normalised_weighted_mean_of_the_past():
    values = [0.3, 0.9, 0.1, 0.7, 0.5]
    w = 0.8
    for t in range(1, len(values) + 1):
        weights = [(1 - w) * w ** (t - k) for k in range(1, t + 1)]
        expected = sum(c * x for c, x in zip(weights, values[:t])) / sum(weights)
        assert ema(values, w)[t - 1] == pytest.approx(expected)


def test_ema_edges():
    assert ema([1.0, 5.0, -2.0], 0.0) == [1.0, 5.0, -2.0]
    assert ema([], 0.6) == []
    assert ema([3.0] * 4, 0.9) == pytest.approx([3.0] * 4)      # a constant stays constant
    with pytest.raises(ValueError, match="smoothing weight"):
        ema([1.0], 1.0)
