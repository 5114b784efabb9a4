"""A real short run with an RL stage, a distillation round and a preference round (slow).

Real actors (the built-in engine, which starts in seconds where vLLM's engine core takes minutes on
a loaded machine; an environment worker; the DeepSpeed learner) on the instructions family with
one rule per task: a cold start on the reference replies, 2 RL steps, then after RL step 2 a
distillation round (3 learner steps) and a preference round (6 learner steps), each evaluated on
held-out instruction tasks (topics no training task uses) before and after. The figures this run measured on the
development machine are in the README (Training rounds). What the rounds do to the policy (shorter
correct responses, a higher held-out rubric score) is measured there but not asserted: at this
scale it is within run-to-run noise (README), so an assertion would pass or fail by chance.
"""

import json
import math

import pytest

from kpop.metrics import read_metrics
from kpop.spec import load_spec

pytestmark = pytest.mark.slow

OVERRIDES = ["envs=[{name: instructions, options: {max_rules: 1}}]", "logging.progress=lines", "logging.tensorboard=false",
             "model.hidden_size=64", "model.intermediate_size=128", "model.num_heads=2", "model.num_kv_heads=1",
             "rollout.engine.type=builtin", "rollout.sampling.max_new_tokens=64", "rollout.max_total_tokens=256",
             "rollout.max_turns=1", "sft.steps=120", "sft.batch_size=16", "sft.num_examples=512",
             "train.steps=2", "train.tasks_per_step=4", "rollout.group_size=8", "train.eval_tasks=64",
             "learner.distill.every=2", "learner.distill.steps=3", "learner.distill.tasks=8",
             "learner.preference.every=2", "learner.preference.steps=6", "learner.preference.tasks=16"]


@pytest.fixture(scope="module")
def finished(ray_session, tmp_path_factory):
    from kpop.launch import run

    run_dir = tmp_path_factory.mktemp("rounds")
    spec = load_spec(None, [*OVERRIDES, f"run_dir={run_dir}"])
    result = run(spec)
    return spec, result, read_metrics(spec.run_dir)


def _evals(records):
    return {r["label"]: r for r in records if r["phase"] == "eval"}


def test_the_run_logs_rl_then_both_rounds_with_evaluations_around_them(finished):
    spec, result, records = finished
    assert [r["label"] for r in records if r["phase"] == "eval"] == [
        "before_rl", "before_distill", "after_distill", "after_preference", "after_rl"]
    order = [(r["phase"], r["step"]) for r in records if r["phase"] in ("rl", "distill", "preference")]
    assert order == [("rl", 1), ("rl", 2), *[("distill", i) for i in (1, 2, 3)],
                     *[("preference", i) for i in range(1, 7)]]
    versions = [r["version"] for r in records if r["phase"] in ("rl", "distill", "preference")]
    assert versions == sorted(versions) and len(set(versions)) >= 5   # the rounds trained and pushed weights
    assert [(r["kind"], r["after_step"]) for r in result["rounds"]] == [("distill", 2), ("preference", 2)]
    assert json.loads((spec.run_dir / "summary.json").read_text()) == result


def test_distillation_round_logs_its_steps_and_trains_on_the_shortest_correct_samples(finished):
    _, result, records = finished
    steps = [r for r in records if r["phase"] == "distill"]
    assert len(steps) == 3
    assert all(r["episodes"] == 8 * 8 and 0 < r["targets"] <= 8 and r["correct"] >= r["targets"] for r in steps)
    assert all(r["pruned"] == 0 for r in steps)   # the instructions family declares no answer marker
    # the learner trained on exactly the targets: one shortest correct sample per prompt
    assert all(r["tokens"] == pytest.approx(r["targets"] * r["target_tokens"]) for r in steps)
    assert {"rubric", "sampled_rubric"} <= set(result["rounds"][0]["after"])


def test_preference_round_logs_its_steps_against_the_policy_at_its_start(finished):
    _, result, records = finished
    steps = [r for r in records if r["phase"] == "preference"]
    assert len(steps) == 6
    assert all(r["episodes"] == 16 * 8 and r["pairs"] > 0 and "rubric" in r for r in steps)
    # the policy at the round's start is the DPO reference: the first step starts every pair at z = 0
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5) and steps[0]["pair_accuracy"] == 0.0
    before, after = result["rounds"][1]["before"], result["rounds"][1]["after"]   # held-out, unseen topics
    assert "rubric" in before and "rubric" in after
