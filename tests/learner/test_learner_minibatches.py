"""PPO mini-batches: the plan's split, the shard over ranks, and the learner's updates against a
naive reference (plain torch, one sequence at a time, no DeepSpeed)."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from kpop.learner.learner import Learner
from kpop.learner.objectives.preference import FocusState
from kpop.learner.plan import plan_step, shard
from kpop.spec.learner import LearnerSpec

_spec = importlib.util.spec_from_file_location("engine_cases", Path(__file__).with_name("test_learner_engine.py"))
_engine_cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_engine_cases)
make_batch = _engine_cases.make_batch


def rl_spec(objective: str = "grpo", **kw) -> LearnerSpec:
    return LearnerSpec.model_validate({"micro_batch_size": 3, "lr": 2e-2, "objective": {"type": objective},
                                       "off_policy": {"type": "none"}, **kw})


def test_plan_drops_zero_advantage_rows_and_strides_the_minibatches():
    rows = make_batch(0, n=9)          # four groups of two (rewards 0, 1), a last group of one
    plan = plan_step(rows, "rl", LearnerSpec(minibatches=3), FocusState())
    kept = rows[:8]
    assert plan.rows == kept[0::3] + kept[1::3] + kept[2::3]
    assert plan.minibatches == (3, 3, 2) and plan.pieces == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert plan.advantages == pytest.approx([(1.0 if t.reward else -1.0) for t in plan.rows], abs=1e-5)
    assert plan.num_tokens == sum(t.num_generated for t in rows)       # batch-level normaliser
    assert plan.trained_tokens == sum(t.num_generated for t in kept)
    assert plan.epochs == 1
    sft = plan_step(rows, "sft", LearnerSpec(minibatches=3, epochs=2), FocusState())
    assert sft.rows == rows and sft.minibatches == (9,) and sft.epochs == 1   # RL only


def test_plan_with_fewer_rows_than_minibatches_keeps_no_empty_one():
    plan = plan_step(make_batch(0, n=4), "rl", LearnerSpec(minibatches=8), FocusState())
    assert plan.minibatches == (1, 1, 1, 1)
    same = [t.with_reward(1.0, {}) for t in make_batch(0, n=4)]
    empty = plan_step(same, "rl", LearnerSpec(minibatches=2), FocusState())
    assert empty.rows == [] and empty.trained_tokens == 0 and empty.num_tokens > 0


def test_shard_splits_every_minibatch_over_the_ranks():
    plan = plan_step(make_batch(0, n=8), "rl", LearnerSpec(minibatches=3), FocusState())   # sizes 3, 3, 2
    parts = shard(plan, 2, micro_batch_size=1)
    assert [p.minibatches for p in parts] == [(2, 2, 1), (1, 1, 1)]
    assert parts[0].rows == [plan.rows[i] for i in (0, 1, 3, 4, 6)]
    assert parts[1].rows == [plan.rows[i] for i in (2, 5, 7)]
    assert [p.micro_batches for p in parts] == [2, 2]       # the largest piece, on every rank
    assert all(p.trained_tokens == plan.trained_tokens and p.num_tokens == plan.num_tokens for p in parts)


def naive_step(model_dir, rows, spec: LearnerSpec):
    """One RL step with PPO mini-batches, written out per sequence and per token (GRPO only).
    Returns (state dict, clipped (token, update) pairs / all pairs, largest gradient norm)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    groups: dict[str, list[float]] = {}
    for t in rows:
        groups.setdefault(t.group_id, []).append(t.reward)

    def advantage(t):
        rs = groups[t.group_id]
        mean = sum(rs) / len(rs)
        std = math.sqrt(sum((r - mean) ** 2 for r in rs) / len(rs))
        return (t.reward - mean) / (std + 1e-6) if std > 0 else 0.0

    def logprobs(t):
        ids = torch.tensor([t.token_ids])
        logits = model(input_ids=ids).logits[0, :-1]
        return torch.log_softmax(logits.float(), -1).gather(1, ids[0, 1:, None])[:, 0]

    kept = [(t, advantage(t)) for t in rows if advantage(t) != 0.0]
    n_total = sum(t.num_generated for t in rows)
    with torch.no_grad():
        old = [logprobs(t) for t, _ in kept]
    order = [i for k in range(spec.minibatches) for i in range(k, len(kept), spec.minibatches)]
    sizes = [len(range(k, len(kept), spec.minibatches)) for k in range(spec.minibatches)]
    clipped = pairs = 0
    norms, start = [], 0
    eps = spec.objective.clip_eps
    for size in (s for s in sizes if s):
        opt.zero_grad()
        loss = torch.zeros(())
        for i in order[start:start + size]:
            t, a = kept[i]
            lp = logprobs(t)
            for pos, m in enumerate(t.loss_mask[1:]):
                if not m:
                    continue
                r = torch.exp(lp[pos] - old[i][pos])
                unclipped, clip = r * a, torch.clamp(r, 1 - eps, 1 + eps) * a
                loss = loss - torch.minimum(unclipped, clip) / n_total
                clipped += int(clip < unclipped)
                pairs += 1
        start += size
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)))
        opt.step()
    return model.state_dict(), clipped / pairs, max(norms)


def test_minibatches_match_a_naive_reference_and_clip(learner_model_dir):
    rows = make_batch(5, n=12)
    cfg = rl_spec(minibatches=4)
    learner = Learner(str(learner_model_dir), cfg, seed=0)
    m = learner.train_step(rows, "rl")
    state, clipped, norm = naive_step(learner_model_dir, rows, cfg)
    print(f"clipped fraction learner {m.clipped_fraction:.4f}, reference {clipped:.4f}")
    assert m.clipped_fraction > 0
    assert m.clipped_fraction == pytest.approx(clipped, abs=1e-6)      # one token would be ~1e-2
    assert m.grad_norm == pytest.approx(norm, rel=1e-4)
    rel = _relative(learner.state_dict(), state, _initial(learner_model_dir))
    print(f"|theta - theta_ref| / |theta - theta_0| = {rel:.2e}")
    assert rel < 1e-3
    assert learner.steps == 4 and m.version == 1        # four optimiser steps, one policy version


def _update(model_dir, objective: str, rows, **kw) -> tuple[dict[str, torch.Tensor], float]:
    learner = Learner(str(model_dir), rl_spec(objective, **kw), seed=0)
    m = learner.train_step(rows, "rl")
    return learner.state_dict(), m.clipped_fraction


def _initial(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir)).state_dict()


def _relative(a, b, start) -> float:
    """|θ_a - θ_b| / |θ_a - θ_0| over all parameters (L2): Adam's first steps move parameters whose
    gradient is ~0 by up to lr on rounding noise, so element-wise maxima say little."""
    diff = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a)
    step = sum(float(((a[k] - start[k]) ** 2).sum()) for k in a)
    return math.sqrt(diff / step)


def test_objectives_coincide_with_one_minibatch_and_differ_with_four(learner_model_dir):
    rows = make_batch(6, n=12)
    one = {o: _update(learner_model_dir, o, rows) for o in ("grpo", "gspo", "lpo")}
    assert all(c == 0.0 for _, c in one.values())               # every ratio is exactly 1
    start = _initial(learner_model_dir)
    same = [_relative(one["grpo"][0], one[o][0], start) for o in ("gspo", "lpo")]
    four = {o: _update(learner_model_dir, o, rows, minibatches=4) for o in ("grpo", "gspo", "lpo")}
    assert all(c > 0 for _, c in four.values())
    gaps = [_relative(four[a][0], four[b][0], start) for a, b in (("grpo", "gspo"), ("grpo", "lpo"), ("gspo", "lpo"))]
    print(f"relative update gaps with one mini-batch {same}, with four {gaps}")
    assert max(same) < 1e-3 and min(gaps) > 1e-2


def test_epochs_pass_over_the_minibatches_again(learner_model_dir):
    rows = make_batch(7, n=8)
    once = Learner(str(learner_model_dir), rl_spec(minibatches=2), seed=0)
    twice = Learner(str(learner_model_dir), rl_spec(minibatches=2, epochs=2), seed=0)
    a, b = once.train_step(rows, "rl"), twice.train_step(rows, "rl")
    assert (once.steps, twice.steps) == (2, 4)
    assert a.mismatch == pytest.approx(b.mismatch)          # batch metrics count each token once
    assert _relative(twice.state_dict(), once.state_dict(), _initial(learner_model_dir)) > 0.1


def test_rl_after_the_cold_start_starts_adam_afresh(learner_model_dir, tmp_path):
    """With fresh_rl_moments the first RL step equals a fresh AdamW's from the cold start's weights
    (also after resuming from a checkpoint written at the end of the cold start); without it the
    cold start's moments change the update."""
    rows, cold = make_batch(5, n=12), make_batch(1)
    cfg = rl_spec(minibatches=2, fresh_rl_moments=True)
    fresh = Learner(str(learner_model_dir), cfg, seed=0)
    fresh.train_step(cold, "sft")
    fresh.save(tmp_path / "sft")
    fresh.train_step(rows, "rl")
    kept = Learner(str(learner_model_dir), rl_spec(minibatches=2), seed=0)     # the default: off
    kept.train_step(cold, "sft")
    kept.train_step(rows, "rl")
    resumed = Learner(str(learner_model_dir), cfg, seed=1)
    resumed.load(tmp_path / "sft")
    resumed.train_step(rows, "rl")
    reference, _, _ = naive_step(tmp_path / "sft", rows, cfg)
    start = _initial(tmp_path / "sft")
    gaps = [_relative(x.state_dict(), reference, start) for x in (fresh, resumed, kept)]
    print(f"relative gap to a fresh AdamW: fresh {gaps[0]:.1e}, resumed {gaps[1]:.1e}, kept moments {gaps[2]:.1e}")
    assert gaps[0] < 1e-3 and gaps[1] < 1e-3 and gaps[2] > 0.1


def test_a_step_with_nothing_to_learn_keeps_the_weights_and_still_advances_the_version(learner_model_dir):
    learner = Learner(str(learner_model_dir), rl_spec(), seed=0)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    same = [t.with_reward(1.0, {}) for t in make_batch(0, n=4)]    # every group scored alike
    m = learner.train_step(same, "rl")
    assert m.tokens == 0 and learner.steps == 0
    assert m.version == 1 and learner.publish().version == 1          # the scheduler counts it as a step
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())
