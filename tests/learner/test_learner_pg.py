"""Group advantages, the GRPO loss and collation against hand-computed numbers."""

import math

import pytest
import torch

from kpop.learner.advantages import group_advantages
from kpop.learner.batch import collate, split
from kpop.learner.objectives.grpo import grpo_loss
from kpop.learner.objectives.sft import sft_loss
from kpop.trajectory import Trajectory


def test_group_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5])
    adv = group_advantages(rewards, ["a", "a", "a", "a", "b", "b"])
    # group a: mean 0.5, population std 0.5 -> +-1; group b: no spread -> 0
    assert torch.allclose(adv, torch.tensor([1.0, -1.0, -1.0, 1.0, 0.0, 0.0]), atol=1e-5)
    raw = group_advantages(rewards, ["a", "a", "a", "a", "b", "b"], normalize_std=False)
    assert torch.allclose(raw, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0]))


def test_grpo_loss_hand_computed_with_clipping():
    logp = torch.tensor([[math.log(0.5), math.log(0.9)], [math.log(0.2), 0.0]])
    old = torch.tensor([[math.log(0.4), math.log(0.6)], [math.log(0.4), 0.0]])
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, stats = grpo_loss(logp, old, adv, mask, clip_eps=0.2, num_tokens=3)
    # ratios 1.25, 1.5, 0.5; A=+1 clips at 1.2 for both; A=-2: min(-1.0, 0.8*-2=-1.6) = -1.6
    expected = -(1.2 + 1.2 + -1.6) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats.clipped_fraction == pytest.approx(1.0)
    assert stats.mean_ratio == pytest.approx((1.25 + 1.5 + 0.5) / 3, rel=1e-5)


def test_grpo_gradient_on_policy_is_advantage_times_score():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv = torch.tensor([3.0])
    loss, _ = grpo_loss(logp, logp.detach(), adv, torch.ones(1, 2), clip_eps=0.2, num_tokens=2)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1.5, -1.5]]))


def test_sft_loss_is_masked_mean_nll():
    logp = torch.tensor([[-1.0, -3.0, -5.0]])
    assert sft_loss(logp, torch.tensor([[1.0, 0.0, 1.0]]), num_tokens=2).item() == pytest.approx(3.0)


def traj(ids, mask, reward=0.0, group="g"):
    lps = [-0.5 if m else 0.0 for m in mask]
    vers = [0 if m else -1 for m in mask]
    return Trajectory("t", "e", ids, mask, lps, vers, reward=reward, group_id=group)


def test_collate_shifts_and_pads():
    b = collate([traj([1, 2, 3], [0, 1, 1], 1.0), traj([4, 5], [0, 1])], pad_id=0)
    assert b.input_ids.tolist() == [[1, 2, 3], [4, 5, 0]]
    assert b.targets.tolist() == [[2, 3], [5, 0]]
    assert b.loss_mask.tolist() == [[1.0, 1.0], [1.0, 0.0]]
    assert b.behaviour_logprobs.tolist() == [[-0.5, -0.5], [-0.5, 0.0]]
    assert b.num_tokens == 3 and b.rewards.tolist() == [1.0, 0.0]
    parts = split(b, 1)
    assert [p.input_ids.shape[1] for p in parts] == [3, 2]
    assert sum(p.num_tokens for p in parts) == b.num_tokens
