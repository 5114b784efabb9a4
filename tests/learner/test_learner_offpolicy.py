"""KPop binary-KL mask, IcePop band, TIS and mismatch metrics against hand-computed numbers."""

import math

import pytest
import torch

from kpop.learner.objectives.grpo import grpo_loss
from kpop.learner.objectives.offpolicy import (
    binary_kl,
    correction_weights,
    icepop_weights,
    kpop_weights,
    mismatch_sums,
    tis_weights,
)
from kpop.spec.learner import KPopMaskSpec, NoCorrectionSpec


def lg(*ps):
    return torch.tensor([[math.log(p) for p in ps]], dtype=torch.float64)


def test_binary_kl_hand_computed():
    # D(0.5||0.25) = 0.5 ln 2 + 0.5 ln(0.5/0.75) = 0.143841; D(0.25||0.5) = 0.25 ln .5 + .75 ln 1.5 = 0.130812
    assert binary_kl(lg(0.5), lg(0.25)).item() == pytest.approx(0.143841, abs=1e-6)
    assert binary_kl(lg(0.25), lg(0.5)).item() == pytest.approx(0.130812, abs=1e-6)
    assert binary_kl(lg(0.3), lg(0.3)).item() == pytest.approx(0.0, abs=1e-12)


def test_kpop_is_wide_for_rare_tokens_and_tight_for_likely_ones():
    # token 0: p=0.5, q=0.25 (max D = 0.143841); token 1: p=0.01, q=0.0015 (ratio 6.67, max D ~ 0.0105);
    # token 2: p=0.99, q=0.9 (ratio 1.1; D(p||q) = 0.071331, D(q||p) = 0.144479)
    p, q, mask = lg(0.5, 0.01, 0.99), lg(0.25, 0.0015, 0.9), torch.ones(1, 3)
    c = kpop_weights(p, q, mask, phi=0.1)
    assert c.masked.tolist() == [[True, False, True]]
    assert torch.allclose(c.weights, torch.tensor([[0.0, 0.01 / 0.0015, 0.0]], dtype=torch.float64))
    assert kpop_weights(p, q, mask, phi=0.15).masked.tolist() == [[False, False, False]]
    assert kpop_weights(p, q, mask, phi=0.144).masked.tolist() == [[False, False, True]]
    ice = icepop_weights(p, q, mask, alpha=0.5, beta=5.0)   # the ratio band does the opposite
    assert ice.masked.tolist() == [[False, True, False]]
    assert torch.allclose(ice.weights, torch.tensor([[2.0, 0.0, 1.1]], dtype=torch.float64))


def test_kpop_cap_filters_the_large_ratios_the_binary_kl_admits():
    # p = 0.2, q = 0.01: D(p||q) = 0.2 ln 20 + 0.8 ln(0.8/0.99) = 0.4286, D(q||p) = 0.01 ln 0.05 +
    # 0.99 ln(0.99/0.8) = 0.1810: inside phi = 0.75 with ratio 20. p = 0.3, q = 0.2: ratio 1.5.
    p, q, mask = lg(0.2, 0.3), lg(0.01, 0.2), torch.ones(1, 2)
    assert binary_kl(p, q)[0, 0].item() == pytest.approx(0.4286, abs=1e-4)
    assert kpop_weights(p, q, mask, phi=0.75).masked.tolist() == [[False, False]]
    capped = correction_weights(KPopMaskSpec(), p, q, mask)               # default cap 5
    assert capped.masked.tolist() == [[True, False]]
    assert torch.allclose(capped.weights, torch.tensor([[0.0, 1.5]], dtype=torch.float64))
    assert not correction_weights(KPopMaskSpec(cap=None), p, q, mask).masked.any()


def test_tis_truncates_and_respects_the_mask():
    c = tis_weights(lg(0.5, 0.01, 0.99), lg(0.25, 0.0015, 0.9), torch.tensor([[1.0, 1.0, 0.0]]), cap=1.5)
    assert torch.allclose(c.weights, torch.tensor([[1.5, 1.5, 0.0]], dtype=torch.float64))
    assert not c.masked.any()


def test_masked_tokens_keep_the_original_normaliser():
    logp, logq = lg(0.5, 0.5, 0.5).float(), lg(0.25, 0.5, 0.5).float()
    mask = torch.ones(1, 3)
    c = correction_weights(KPopMaskSpec(phi=0.1), logp, logq, mask)     # token 0 masked, others weight 1
    loss, _ = grpo_loss(logp, logp, torch.tensor([1.0]), mask, 0.2, 3, token_weights=c.weights)
    assert loss.item() == pytest.approx(-2 / 3, abs=1e-6)
    none = correction_weights(NoCorrectionSpec(), logp, logq, mask)
    assert torch.equal(none.weights, mask) and not none.masked.any()


def test_mismatch_sums_hand_computed():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    logq = torch.tensor([[-1.5, -1.0, 0.0]])
    m = mismatch_sums(logp, logq, torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[True, False, True]]))
    assert m.abs_logratio == pytest.approx(0.5 + 1.0) and m.masked == 1.0
