"""A real short run with an RL stage, a distillation round and a preference round (slow).

Real actors (vLLM engine, environment worker, DeepSpeed learner) on the instructions family: a
cold start on the reference replies, 2 RL steps, then after RL step 2 a distillation round (2
learner steps) and a preference round (3 learner steps), each evaluated on held-out instruction
tasks (topics no training task uses) before and after. The figures this run measured on the
development machine are in the README (Training rounds).
"""

import json

import pytest

from kpop.metrics import read_metrics
from kpop.spec import load_spec

pytestmark = pytest.mark.slow

OVERRIDES = ["envs=[{name: instructions}]", "logging.progress=lines", "logging.tensorboard=false",
             "rollout.sampling.max_new_tokens=96", "rollout.max_total_tokens=384", "rollout.max_turns=1",
             "sft.steps=200", "sft.num_examples=2048", "train.steps=2", "train.tasks_per_step=8",
             "rollout.group_size=8", "train.eval_tasks=64",
             "learner.distill.every=2", "learner.distill.steps=2", "learner.distill.tasks=16",
             "learner.preference.every=2", "learner.preference.steps=3", "learner.preference.tasks=16"]


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
    assert order == [("rl", 1), ("rl", 2), ("distill", 1), ("distill", 2),
                     ("preference", 1), ("preference", 2), ("preference", 3)]
    versions = [r["version"] for r in records if r["phase"] in ("rl", "distill", "preference")]
    assert versions == sorted(versions) and len(set(versions)) >= 5   # the rounds trained and pushed weights
    assert [(r["kind"], r["after_step"]) for r in result["rounds"]] == [("distill", 2), ("preference", 2)]
    assert json.loads((spec.run_dir / "summary.json").read_text()) == result


def test_distillation_round_logs_its_steps_and_shortens_correct_responses(finished):
    _, result, records = finished
    steps = [r for r in records if r["phase"] == "distill"]
    assert all(r["episodes"] == 16 * 8 and r["targets"] > 0 and r["correct"] >= r["targets"] for r in steps)
    # each step trains on the shortest correct sample per prompt
    assert all(r["target_tokens"] < r["correct_tokens"] for r in steps)
    before, after = result["rounds"][0]["before"], result["rounds"][0]["after"]
    assert after["correct_tokens"] < before["correct_tokens"]


def test_preference_round_logs_its_steps_and_raises_the_rubric_score(finished):
    _, result, records = finished
    steps = [r for r in records if r["phase"] == "preference"]
    assert all(r["episodes"] == 16 * 8 and r["pairs"] > 0 and "rubric" in r for r in steps)
    before, after = result["rounds"][1]["before"], result["rounds"][1]["after"]
    assert after["rubric"] > before["rubric"]
