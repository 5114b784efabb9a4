"""The DeepSpeed learner in-process: every mode trains, publish/save are usable, exact resume."""

import random

import pytest
import torch

from kpop.learner.learner import Learner
from kpop.rollout.weight_sync import chunks_to_state_dict
from kpop.spec.learner import LearnerSpec
from kpop.trajectory import Trajectory


def make_batch(seed: int, n: int = 4, confident_first: bool = False) -> list[Trajectory]:
    """Random tokens; engine log-probs U(-6, -3), or log 0.9 for the first trajectory if asked."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [1] + [rng.randrange(4, 100) for _ in range(3)]
        gen = [rng.randrange(4, 100) for _ in range(rng.randrange(3, 8))]
        out.append(Trajectory(f"t{i // 2}", "e", prompt + gen, [0] * 4 + [1] * len(gen),
                              [0.0] * 4 + [-0.1053605 if confident_first and i == 0 else rng.uniform(-6.0, -3.0)
                                           for _ in gen], [-1] * 4 + [0] * len(gen),
                              reward=float(i % 2), group_id=f"g{i // 2}",
                              reward_parts={"informative": float(i % 2), "errors": float(1 - i % 2)}))
    return out


def spec(**kw) -> LearnerSpec:
    return LearnerSpec.model_validate({"micro_batch_size": 3, "lr": 1e-3, **kw})


def test_every_mode_trains_and_publishes_hf_weights(learner_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    learner = Learner(str(learner_model_dir), spec(objective={"type": "lpo"}, off_policy={"phi": 0.5, "cap": None}), seed=0)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    metrics = {mode: learner.train_step(make_batch(1, confident_first=True), mode)
               for mode in ("dpo", "sft", "rl", "distill")}
    assert [m.version for m in metrics.values()] == [1, 2, 3, 4]
    # first step: policy == frozen reference, so z = 0 for both pairs and the loss is ln 2
    assert metrics["dpo"].loss == pytest.approx(0.693147, abs=1e-5) and metrics["dpo"].pair_accuracy == 0.0
    assert metrics["sft"].loss == pytest.approx(4.6, abs=0.3)      # ~ln(100) for an untrained model
    assert metrics["sft"].grad_norm > 0 and metrics["rl"].mismatch > 0.3
    # trainer p ~ 0.01 everywhere; an engine claiming q = 0.9 gives D(q||p) ~ 3.8 > phi: exactly the first
    # trajectory's tokens are masked, while q in e^-6..e^-3 stays inside the (wide, low-probability) region
    first = make_batch(1)[0].num_generated
    assert metrics["rl"].masked_fraction == pytest.approx(first / metrics["rl"].tokens)
    assert metrics["distill"].tokens < metrics["sft"].tokens          # one shortest correct sample per prompt
    update = learner.publish()
    weights = chunks_to_state_dict(update.chunks)
    assert update.version == 4 and set(weights) == set(before)
    assert any(not torch.equal(weights[k], before[k]) for k in before)
    out = learner.save(tmp_path / "ckpt")
    reloaded = AutoModelForCausalLM.from_pretrained(str(out)).state_dict()
    assert all(torch.equal(reloaded[k], weights[k]) for k in weights)
    assert (out / "tokenizer.json").is_file() and (out / "trainer_state").is_dir()


def test_save_then_load_resumes_with_identical_losses(learner_model_dir, tmp_path):
    cfg = spec(zero_stage=2, objective={"type": "lpo"}, warmup_steps=3)
    first = Learner(str(learner_model_dir), cfg, seed=0)
    first.train_step(make_batch(1), "sft")
    first.save(tmp_path / "ckpt")
    expected = [first.train_step(make_batch(s), "rl") for s in (2, 3)]
    resumed = Learner(str(learner_model_dir), cfg, seed=123)
    assert resumed.load(tmp_path / "ckpt") == 1
    got = [resumed.train_step(make_batch(s), "rl") for s in (2, 3)]
    assert [m.loss for m in got] == [m.loss for m in expected]          # bit-identical
    assert [m.grad_norm for m in got] == [m.grad_norm for m in expected]
    assert all(m.grad_norm > 0 for m in expected)             # ZeRO-2 reports the global norm
    assert [m.version for m in got] == [2, 3]
    a, b = first.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_step_without_trainable_data_leaves_weights_and_advances_version(learner_model_dir):
    learner = Learner(str(learner_model_dir), spec(), seed=0)
    learner.train_step(make_batch(1), "sft")
    before = learner.state_dict()
    wrong = [t.with_reward(0.0, {}) for t in make_batch(2)]
    m = learner.train_step(wrong, "distill")          # no correct sample -> nothing to distill
    assert (m.version, m.tokens, m.sequences) == (2, 0, 4)       # same weights, next version
    after = learner.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_zero3_publish_and_save_gather_the_full_model(learner_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    z0 = Learner(str(learner_model_dir), spec(zero_stage=0), seed=0)
    z3 = Learner(str(learner_model_dir), spec(zero_stage=3), seed=0)
    for s in (1, 2):
        a, b = z0.train_step(make_batch(s), "sft"), z3.train_step(make_batch(s), "sft")
        assert b.loss == pytest.approx(a.loss, abs=1e-5) and b.grad_norm == pytest.approx(a.grad_norm, rel=1e-4)
    w0, w3 = chunks_to_state_dict(z0.publish().chunks), chunks_to_state_dict(z3.publish().chunks)
    assert set(w3) == set(w0) and all(w3[k].shape == w0[k].shape for k in w0)
    assert max(float((w3[k] - w0[k]).abs().max()) for k in w0) < 1e-5
    saved = AutoModelForCausalLM.from_pretrained(str(z3.save(tmp_path / "z3"))).state_dict()
    assert all(torch.equal(saved[k], w3[k]) for k in w3)


def test_rl_steps_use_their_own_thread_count(learner_model_dir):
    threads = torch.get_num_threads()
    try:
        learner = Learner(str(learner_model_dir), spec(), seed=0, num_threads=2, rl_threads=1)
        learner.train_step(make_batch(3), "rl")
        assert torch.get_num_threads() == 1             # overlapping generation: fewer threads
        learner.train_step(make_batch(3), "sft")
        assert torch.get_num_threads() == 2             # the cold start keeps every core
    finally:
        torch.set_num_threads(threads)


def test_set_sft_lr_scales_the_next_sft_step(learner_model_dir):
    """Adam's first update is lr * g / (|g| + eps), about lr per parameter: a tenth of the rate
    moves the weights a tenth as far (RunSpec sft.anneal.lr goes through set_sft_lr)."""
    base = Learner(str(learner_model_dir), spec(), seed=0, sft_lr=1e-3)
    slow = Learner(str(learner_model_dir), spec(), seed=0, sft_lr=1e-3)
    assert slow.set_sft_lr(1e-4) == 1e-3
    start = {k: v.clone() for k, v in base.state_dict().items()}
    moved = []
    for learner in (base, slow):
        learner.train_step(make_batch(1), "sft")
        after = learner.state_dict()
        moved.append(sum(float((after[k] - start[k]).abs().sum()) for k in start))
    assert moved[1] / moved[0] == pytest.approx(0.1, rel=0.05)


def test_sft_step_reports_each_environment_s_loss_as_an_independent_forward_computes_it(learner_model_dir):
    from dataclasses import replace

    from transformers import AutoModelForCausalLM

    batch = [replace(t, env_id="calc" if i < 3 else "search") for i, t in enumerate(make_batch(5, n=5))]
    naive = AutoModelForCausalLM.from_pretrained(str(learner_model_dir)).float().eval()
    nll, count = {}, {}
    with torch.no_grad():
        for t in batch:        # one sequence at a time, no padding: the loss the step saw before its update
            logits = naive(torch.tensor([t.token_ids])).logits[0, :-1].log_softmax(-1)
            logp = logits.gather(1, torch.tensor(t.token_ids[1:])[:, None])[:, 0]
            mask = torch.tensor(t.loss_mask[1:], dtype=torch.float32)
            nll[t.env_id] = nll.get(t.env_id, 0.0) - float((logp * mask).sum())
            count[t.env_id] = count.get(t.env_id, 0) + int(mask.sum())
    learner = Learner(str(learner_model_dir), spec(), seed=0)    # micro-batches of 3: the envs share one
    m = learner.train_step(batch, "sft")
    by_env = m.loss_by_env()
    assert set(by_env) == {"loss/calc", "loss/search"}
    for env in ("calc", "search"):
        assert by_env[f"loss/{env}"] == pytest.approx(nll[env] / count[env], rel=1e-4)
    assert m.loss == pytest.approx(sum(nll.values()) / sum(count.values()), rel=1e-4)
