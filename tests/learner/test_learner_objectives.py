"""LPO, GSPO and their relation to GRPO, against hand-computed numbers and autograd checks."""

import pytest
import torch

from kpop.learner.objectives.grpo import grpo_loss
from kpop.learner.objectives.gspo import gspo_loss, sequence_units, token_units
from kpop.learner.objectives.lpo import lpo_loss, unit_clip_loss, unit_mean
from kpop.learner.segmentation import sentence_units

LOGP_OLD = torch.tensor([[-1.0, -2.0, -0.5, -1.5], [-0.7, -0.2, -1.0, 0.0]])
LOG_RATIO = torch.tensor([[0.02, 0.04, -0.1, 0.0], [-0.1, 0.02, 0.3, 0.0]])
UNITS = torch.tensor([[0, 0, 1, 1], [0, 0, -1, -1]])


def test_unit_mean_hand_computed():
    assert torch.allclose(unit_mean(LOG_RATIO, UNITS), torch.tensor([[0.03, 0.03, -0.05, -0.05], [-0.04, -0.04, 0, 0]]))


def test_lpo_loss_hand_computed():
    logp = (LOGP_OLD + LOG_RATIO).requires_grad_()
    loss, stats = lpo_loss(logp, LOGP_OLD, torch.tensor([1.0, -1.0]), UNITS, clip_eps=0.03, num_tokens=6)
    # row 0: r = e^0.03 = 1.030455 -> clipped to 1.03 (A=+1); r = e^-0.05 = 0.951229 (unclipped, A=+1)
    # row 1: r = e^-0.04 = 0.960789, A=-1: min(-0.960789, -0.97) = -0.97 (clipped)
    expected = -(2 * 1.03 + 2 * 0.951229 - 2 * 0.97) / 6
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats.clipped_fraction == pytest.approx(4 / 6)
    loss.backward()
    # only the unclipped sentence carries gradient; its |s| tokens each carry r, and dr/dlogp_t = r/|s|,
    # so dL/dlogp_t = -A * |s| * (r/|s|) / N = -0.951229 / 6 per token
    g = -0.951229 / 6
    assert torch.allclose(logp.grad, torch.tensor([[0, 0, g, g], [0, 0, 0, 0]]), atol=1e-6)


def test_unit_clip_loss_gradcheck_float64():
    torch.manual_seed(0)
    old = torch.randn(2, 5, dtype=torch.float64)
    logp = (old + 0.01 * torch.randn(2, 5, dtype=torch.float64)).requires_grad_()
    units = torch.tensor([[0, 0, 1, 1, 1], [-1, 0, 1, 2, -1]])
    adv = torch.tensor([0.7, -1.3], dtype=torch.float64)
    w = torch.rand(2, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: unit_clip_loss(x, old, adv, units, 0.2, 7, w)[0], (logp,))


def test_gspo_hand_computed():
    old = torch.tensor([[-1.0, -1.0]])
    logp = old + torch.tensor([[0.1, -0.3]])
    loss, _ = gspo_loss(logp, old, torch.tensor([2.0]), torch.ones(1, 2), clip_eps=0.2, num_tokens=2)
    # s = exp(mean(0.1, -0.3)) = e^-0.1 = 0.904837 inside [0.8, 1.2]; |y| * s * A / N = 2 * 0.904837 * 2 / 2
    assert loss.item() == pytest.approx(-1.809675, abs=1e-6)


def char_decode(ids):
    vocab = {0: "Q", 1: "a", 2: "b", 3: ".", 4: " "}
    return "".join(vocab[i] for i in ids)


def random_case(t: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(2, t, generator=g) * 3
    logp = (old + 0.3 * torch.randn(2, t, generator=g)).requires_grad_()
    return old, logp, torch.tensor([1.5, -0.5])


def test_lpo_equals_gspo_for_one_sentence():
    ids, mask = [0, 1, 2, 4, 1, 2, 1, 3], [0, 1, 1, 1, 1, 1, 1, 1]  # "Q" + "ab abа." : one sentence
    units = torch.tensor([sentence_units(ids, mask, char_decode)[1:]] * 2)
    assert units[0].tolist() == [0] * 7
    old, logp, adv = random_case(7)
    a, _ = lpo_loss(logp, old, adv, units, 0.2, 14)
    b, _ = gspo_loss(logp, old, adv, torch.ones(2, 7), 0.2, 14)
    ga, = torch.autograd.grad(a, logp)
    gb, = torch.autograd.grad(b, logp)
    assert a.item() == pytest.approx(b.item(), abs=1e-7) and torch.allclose(ga, gb, atol=1e-7)


def test_lpo_equals_grpo_when_every_token_is_a_unit():
    ids, mask = [0, 3, 3, 3, 3, 3, 3], [0, 1, 1, 1, 1, 1, 1]  # every generated token is a full stop
    units = torch.tensor([sentence_units(ids, mask, char_decode)[1:]] * 2)
    assert units[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert torch.equal(units[0], token_units(torch.ones(1, 6))[0])
    old, logp, adv = random_case(6)
    a, _ = lpo_loss(logp, old, adv, units, 0.2, 12)
    b, _ = grpo_loss(logp, old, adv, torch.ones(2, 6), 0.2, 12)
    ga, = torch.autograd.grad(a, logp)
    gb, = torch.autograd.grad(b, logp)
    assert a.item() == pytest.approx(b.item(), abs=1e-6) and torch.allclose(ga, gb, atol=1e-7)


def test_sequence_units_follow_the_mask():
    assert sequence_units(torch.tensor([[0.0, 1, 1, 0, 1]])).tolist() == [[-1, 0, 0, -1, 0]]


def test_grpo_token_weights_scale_terms_and_keep_the_normaliser():
    logp = torch.tensor([[-1.0, -1.0, -1.0]])
    loss, _ = grpo_loss(logp, logp, torch.tensor([1.0]), torch.ones(1, 3), 0.2, 3,
                        token_weights=torch.tensor([[2.0, 0.0, 0.5]]))
    assert loss.item() == pytest.approx(-(2.0 + 0.0 + 0.5) / 3)
