"""Two data-parallel ranks (gloo) end where one rank ends on the same data.

Two drivers: LearnerGroup over Ray actors (the production path), and two plain processes running
learner_rank_worker.py (no Ray; the same DeepSpeed data parallelism, robust when a loaded machine
cannot start Ray).
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from kpop.learner.group import LearnerGroup
from kpop.learner.learner import Learner
from kpop.learner.objectives.preference import FocusState
from kpop.learner.plan import plan_step, shard
from kpop.rollout.weight_sync import chunks_to_state_dict
from kpop.spec.learner import LearnerSpec

_spec = importlib.util.spec_from_file_location("engine_cases", Path(__file__).with_name("test_learner_engine.py"))
_engine_cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_engine_cases)
make_batch = _engine_cases.make_batch

# FP32; the two runs differ only in the order of gradient sums (gloo all-reduce vs one rank's
# accumulation), ~1e-7 relative, which Adam's first steps turn into ~1e-6 absolute parameter noise.
ATOL = 2e-5


def test_shard_splits_evenly_and_keeps_pairs():
    rows = make_batch(0, n=7)          # groups of two (rewards 0, 1) and a last group of one
    plan = plan_step(rows, "rl", LearnerSpec(), FocusState())
    assert plan.rows == rows[:6]       # the lone sample's advantage is 0: not forwarded
    parts = shard(plan, 2, micro_batch_size=2)
    assert [len(p.rows) for p in parts] == [3, 3] and [p.micro_batches for p in parts] == [2, 2]
    assert [t for p in parts for t in p.rows] == rows[:6]
    assert all(p.num_tokens == plan.num_tokens and p.world_size == 2 for p in parts)
    dpo = plan_step(make_batch(0, n=6), "dpo", LearnerSpec(), FocusState())
    assert dpo.num_pairs == 3 and [len(p.rows) for p in shard(dpo, 2, 3)] == [4, 2]


def case(**kw):
    return LearnerSpec.model_validate({"micro_batch_size": 2, "lr": 1e-3, "zero_stage": 2, "num_cpus": 1,
                                       "objective": {"type": "lpo"}, "minibatches": 2, **kw})


def steps():
    return [(make_batch(1, n=5), "sft"), (make_batch(2, n=5), "rl"), (make_batch(3, n=5), "rl")]


def test_combined_per_environment_loss_is_token_weighted_over_ranks():
    from kpop.learner.group import combine
    from kpop.learner.learner import StepMetrics

    def rank(nll, tokens):
        return StepMetrics("sft", 1, 0.0, 0.0, 0, 0, 0.0, 0.0, 0.0, env_nll=nll, env_tokens=tokens)

    both = combine([rank({"a": 6.0, "b": 1.0}, {"a": 3, "b": 1}), rank({"a": 2.0}, {"a": 5})])
    assert both.loss_by_env() == {"loss/a": pytest.approx(8.0 / 8), "loss/b": pytest.approx(1.0)}


@pytest.mark.slow   # two rank processes + one in-process rank: ~60 s on 2 idle cores, minutes when shared
@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_match_one_rank(ray_session, learner_model_dir, stage):
    """Stage 2: the issue's check. Stage 3: also publish gathers the two ranks' parameter shards."""
    import ray

    group = LearnerGroup.create(str(learner_model_dir), case(num_ranks=2, zero_stage=stage), seed=0, num_threads=1)
    assert ray.get(group.ready.remote(), timeout=300) == 0
    single = Learner(str(learner_model_dir), case(zero_stage=stage), seed=0, num_threads=1)
    for trajs, mode in steps():
        two = ray.get(group.train_step.remote(trajs, mode), timeout=300)
        one = single.train_step(trajs, mode)
        assert two.version == one.version and two.tokens == one.tokens and two.sequences == one.sequences == 5
        assert two.loss == pytest.approx(one.loss, abs=1e-5)
        assert two.grad_norm == pytest.approx(one.grad_norm, rel=1e-4)
        assert two.mismatch == pytest.approx(one.mismatch, abs=1e-5)
        assert two.loss_by_env() == pytest.approx(one.loss_by_env(), abs=1e-5)
    update = ray.get(group.publish.remote(), timeout=300)
    assert update.version == 3
    ranks2, ranks1 = chunks_to_state_dict(update.chunks), single.state_dict()
    worst = max(float((ranks2[k] - ranks1[k]).abs().max()) for k in ranks1)
    moved = max(float((ranks1[k] - v).abs().max()) for k, v in _initial(learner_model_dir).items())
    print(f"max |theta_2ranks - theta_1rank| = {worst:.3e}; max |theta - theta_0| = {moved:.3e}")
    assert worst < ATOL < moved
    ray.get(group.close.remote(), timeout=120)
    ray.kill(group)


def _initial(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir)).state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_spawned_ranks_match_one_rank(learner_model_dir, tmp_path, stage):
    """Stage 3 also checks that publish gathers both ranks' parameter shards on rank 0."""
    from kpop.learner.deepspeed_engine import free_port

    worker, port = Path(__file__).with_name("learner_rank_worker.py"), free_port()
    procs = [subprocess.Popen([sys.executable, str(worker), str(learner_model_dir), str(r), "2", str(port), str(stage),
                               str(tmp_path / f"rank{r}.pt")]) for r in range(2)]
    single = Learner(str(learner_model_dir), case(zero_stage=stage), seed=0, num_threads=1)
    ones = [single.train_step(trajs, mode) for trajs, mode in steps()]
    assert [p.wait(timeout=900) for p in procs] == [0, 0]
    import torch

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r1["state"] is None                      # only rank 0 publishes
    for one, a, b in zip(ones, r0["metrics"], r1["metrics"]):
        assert a.loss + b.loss == pytest.approx(one.loss, abs=1e-5) and a.tokens + b.tokens == one.tokens
        assert a.grad_norm == pytest.approx(one.grad_norm, rel=1e-4) and a.grad_norm == b.grad_norm > 0
    ranks1 = single.state_dict()
    worst = max(float((r0["state"][k] - ranks1[k]).abs().max()) for k in ranks1)
    moved = max(float((ranks1[k] - v).abs().max()) for k, v in _initial(learner_model_dir).items())
    print(f"spawned ZeRO-{stage}: max |theta_2ranks - theta_1rank| = {worst:.3e}; max |theta - theta_0| = {moved:.3e}")
    assert worst < ATOL < moved
