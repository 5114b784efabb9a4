"""Shortest-correct selection, focus re-weighting, preference pairs and the DPO loss."""

import pytest
import torch

from kpop.learner.objectives.distill import select_shortest_correct
from kpop.learner.objectives.preference import (
    FocusState,
    build_preference_pairs,
    dpo_loss,
    focus_weights,
    rubric_score,
    update_focus,
)
from kpop.trajectory import Trajectory


def traj(n_gen, reward=0.0, group="g", parts=None, task="t"):
    n = n_gen + 1
    return Trajectory(task, "e", list(range(n)), [0] + [1] * n_gen, [0.0] + [-0.1] * n_gen, [-1] + [0] * n_gen,
                      reward=reward, reward_parts=parts or {}, group_id=group)


def test_select_shortest_correct_per_prompt():
    a_long, a_short, a_wrong = traj(9, 1.0, "a"), traj(4, 1.0, "a"), traj(2, 0.0, "a")
    b_only_wrong = traj(3, 0.0, "b")
    c_tie1, c_tie2 = traj(5, 1.0, "c"), traj(5, 1.0, "c")
    d_acc = traj(7, 0.2, "d", {"accuracy": 1.0})   # the 'accuracy' part wins over the shaped reward
    kept = select_shortest_correct([a_long, a_short, a_wrong, b_only_wrong, c_tie1, c_tie2, d_acc], threshold=1.0)
    assert kept == [a_short, c_tie1, d_acc]


W = {"info": 1.0, "err": -1.0}


def test_focus_moves_weight_from_saturated_dimensions():
    ts = [traj(1, parts={"info": 1.0, "err": 0.0}), traj(1, parts={"info": 1.0, "err": 0.5})]
    s1 = update_focus(FocusState(), ts, W, decay=0.9)
    assert s1.saturation == {"info": 1.0, "err": 0.5} and s1.updates == 1
    # g = 0.1 + 0.9 * (1 - sat) = {0.1, 0.55}; scale = 2 / 0.65 = 3.076923
    f = focus_weights(W, s1, floor=0.1)
    assert f["info"] == pytest.approx(0.307692, abs=1e-6) and f["err"] == pytest.approx(-1.692308, abs=1e-6)
    assert abs(f["info"]) + abs(f["err"]) == pytest.approx(2.0)
    s2 = update_focus(s1, [traj(1, parts={"info": 0.0, "err": 0.0})], W, decay=0.9)
    assert s2.saturation["info"] == pytest.approx(0.9) and s2.saturation["err"] == pytest.approx(0.55)
    assert focus_weights(W, FocusState(), floor=0.1) == W


def test_rubric_score_is_signed():
    assert rubric_score({"info": 0.5, "err": 1.0, "other": 9.0}, W) == pytest.approx(-0.5)


def test_pairs_best_vs_worst_per_prompt_with_margin():
    good = traj(3, group="a", parts={"info": 1.0, "err": 0.0})
    mid = traj(3, group="a", parts={"info": 0.5, "err": 0.0})
    bad = traj(3, group="a", parts={"info": 1.0, "err": 1.0})
    same1, same2 = traj(2, group="b", parts={"info": 1.0}), traj(2, group="b", parts={"info": 1.0})
    pairs = build_preference_pairs([mid, good, bad, same1, same2], W, FocusState(), margin=0.0)
    assert len(pairs) == 1 and pairs[0].chosen is good and pairs[0].rejected is bad
    assert pairs[0].gap == pytest.approx(1.0)
    assert build_preference_pairs([good, bad], W, FocusState(), margin=1.0) == []
    # with 'info' saturated, the error dimension dominates the score
    focus = FocusState({"info": 1.0, "err": 0.0}, 1)
    pairs = build_preference_pairs([mid, bad], W, focus, floor=0.0)
    assert pairs[0].chosen is mid and pairs[0].gap == pytest.approx(2.0)


def test_dpo_loss_hand_computed_and_gradcheck():
    c, r = torch.tensor([-3.0, -6.0]), torch.tensor([-5.0, -4.0])
    rc, rr = torch.tensor([-4.0, -5.0]), torch.tensor([-4.0, -5.0])
    loss, acc = dpo_loss(c, r, rc, rr, beta=0.5, num_pairs=2)
    # z = 0.5 * ((1) - (-1)) = 1 -> log(1 + e^-1) = 0.313262;  z = 0.5 * ((-1) - (1)) = -1 -> 1.313262
    assert loss.item() == pytest.approx((0.313262 + 1.313262) / 2, abs=1e-6) and acc == 0.5
    smooth, _ = dpo_loss(c[:1], r[:1], rc[:1], rr[:1], beta=0.5, num_pairs=1, label_smoothing=0.1)
    assert smooth.item() == pytest.approx(0.9 * 0.313262 + 0.1 * 1.313262, abs=1e-6)
    x = torch.tensor([-3.0, -6.0, -5.0, -4.0], dtype=torch.float64, requires_grad=True)
    ref = rc.double()
    assert torch.autograd.gradcheck(lambda v: dpo_loss(v[:2], v[2:], ref, rr.double(), 0.5, 2, 0.1)[0], (x,))


def _pref_row(ids, group, info):
    n = len(ids)
    return Trajectory("t", "e", [5] + ids, [0] + [1] * n, [0.0] + [-0.5] * n, [-1] + [0] * n,
                      reward_parts={"informative": info}, group_id=group)


def _two_prompts_pairs() -> list[Trajectory]:
    """Two prompts, each with a sample that informs (rubric 1) and one that does not (0)."""
    return [_pref_row([10, 11, 12], "a", 1.0), _pref_row([13, 14], "a", 0.0),
            _pref_row([20, 21], "b", 1.0), _pref_row([22, 23, 24, 25], "b", 0.0)]


def test_reset_reference_makes_the_current_policy_the_dpo_reference(learner_model_dir):
    """After an SFT step moves the weights, DPO against the starting model has z != 0; after
    reset_reference every pair starts at z = 0 exactly: loss log 2, no pair ahead."""
    import math

    from kpop.learner.learner import Learner
    from kpop.spec.learner import LearnerSpec

    rows = _two_prompts_pairs()
    spec = LearnerSpec.model_validate({"preference": {"every": 1, "rubric_weights": {"informative": 1.0}}, "lr": 1e-2})
    learner = Learner(str(learner_model_dir), spec, seed=0)
    learner.train_step([_pref_row([30, 31, 32, 33], "s", 1.0)] * 4, "sft")
    start = learner.train_step(rows, "dpo")
    assert start.pairs == 2 and abs(start.loss - math.log(2)) > 1e-4
    learner.reset_reference()
    m = learner.train_step(rows, "dpo")
    assert m.pairs == 2 and m.loss == pytest.approx(math.log(2), abs=1e-6) and m.pair_accuracy == 0.0
    after = learner.train_step(rows, "dpo")   # the first step moved the policy towards the chosen samples
    assert after.loss < math.log(2) and after.pair_accuracy == 1.0


def test_best_each_pairs_the_best_with_every_sample_below_it():
    # scores under W = {info: 1, err: -1}: 1.0, 0.5, 0.0, 0.5 (prompt a), 1.0, 1.0 (prompt b, a tie)
    a = [traj(3, group="a", parts=p) for p in ({"info": 1.0}, {"info": 0.5}, {"info": 1.0, "err": 1.0}, {"info": 0.5})]
    b = [traj(2, group="b", parts={"info": 1.0}), traj(2, group="b", parts={"info": 1.0})]
    each = build_preference_pairs(a + b, W, FocusState(), pairing="best_each")
    assert [(p.chosen, p.rejected, p.gap) for p in each] == [(a[0], a[1], 0.5), (a[0], a[2], 1.0), (a[0], a[3], 0.5)]
    assert [(p.chosen, p.rejected) for p in build_preference_pairs(a + b, W, FocusState())] == [(a[0], a[2])]
    assert [p.rejected for p in build_preference_pairs(a, W, FocusState(), margin=0.6, pairing="best_each")] == [a[2]]


def _moments(learner) -> list[tuple[torch.Tensor, torch.Tensor]]:
    base = getattr(learner.optimizer, "optimizer", learner.optimizer)
    return [(s["exp_avg"].clone(), s["exp_avg_sq"].clone()) for s in base.state.values() if "exp_avg" in s]


def test_a_round_runs_on_adam_moments_of_its_own_and_rl_continues_on_its_own(learner_model_dir, tmp_path):
    """A DPO round's first update is a fresh AdamW's (m = (1-b1) g and v = (1-b2) g^2 for one g), and
    the RL step after the round continues from the moments RL left (m' = b1 m + (1-b1) g',
    v' = b2 v + (1-b2) g'^2 for one g'); a save inside a round writes RL's moments too."""
    from kpop.learner.learner import Learner
    from kpop.spec.learner import LearnerSpec

    pairs = _two_prompts_pairs()
    rl = [_pref_row([30 + i, 31, 32], f"g{i // 2}", 0.0).with_reward(float(i % 2), {}) for i in range(8)]
    spec = LearnerSpec.model_validate({"preference": {"every": 1, "rubric_weights": {"informative": 1.0}},
                                       "lr": 1e-2, "off_policy": {"type": "none"}})
    b1, b2 = spec.betas
    learner = Learner(str(learner_model_dir), spec, seed=0)
    learner.train_step(rl, "rl")
    learner.train_step(rl, "rl")
    before = _moments(learner)
    learner.train_step(pairs, "dpo")
    for m, v in _moments(learner):
        assert torch.allclose(v, (1 - b2) / (1 - b1) ** 2 * m * m, rtol=1e-4, atol=1e-20)
    learner.train_step(rl, "rl")
    gaps = []
    for (m0, v0), (m1, v1) in zip(before, _moments(learner)):
        g = (m1 - b1 * m0) / (1 - b1)
        gaps.append(float((v1 - (b2 * v0 + (1 - b2) * g * g)).abs().max() / v1.abs().max().clamp_min(1e-30)))
    assert max(gaps) < 1e-4, max(gaps)
    after_rl = _moments(learner)
    learner.train_step(pairs, "dpo")
    learner.save(tmp_path / "ckpt")
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(after_rl, _moments(learner)))
    assert learner.last_mode == "rl"
