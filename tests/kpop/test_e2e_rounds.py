"""A real run of examples/rounds.yaml: an RL stage, a distillation round and a preference round (slow).

Real actors (the built-in engine, an environment worker, the DeepSpeed learner) on the calculator,
whose demonstrations re-check each answer after giving it, and on instruction following with one
rule per request: a cold start, 4 RL steps, then after RL step 4 a distillation round (4 learner
steps) and a preference round (8 learner steps), each evaluated on held-out tasks before and after.

Asserted: distillation cuts the re-checks (its targets are pruned after the answer) and the held-out
correct responses get shorter without losing reward (measured with a wide margin: README, Training
rounds). Not asserted here: that the preference round raises the held-out rubric score; on this
file's start its change was within noise in every run measured (README), so an assertion would pass
or fail by chance. The test checks what the round does: it trains on pairs against the policy at its
start. The rise is asserted where the start leaves the rubric something to fix:
tests/kpop/test_e2e_preference.py (examples/preference.yaml).
"""

import json
import math
from pathlib import Path

import pytest

from kpop.metrics import read_metrics
from kpop.spec import load_spec

pytestmark = pytest.mark.slow

SPEC = Path(__file__).resolve().parents[2] / "examples" / "rounds.yaml"


@pytest.fixture(scope="module")
def finished(ray_session, tmp_path_factory):
    from kpop.launch import run

    run_dir = tmp_path_factory.mktemp("rounds")
    spec = load_spec(SPEC, ["logging.progress=lines", "logging.tensorboard=false", f"run_dir={run_dir}"])
    result = run(spec)
    return spec, result, read_metrics(spec.run_dir)


def _evals(records):
    return {r["label"]: r for r in records if r["phase"] == "eval"}


def test_the_run_logs_rl_then_both_rounds_with_evaluations_around_them(finished):
    spec, result, records = finished
    assert [r["label"] for r in records if r["phase"] == "eval"] == [
        "before_rl", "before_distill", "after_distill", "after_preference", "after_rl"]
    order = [(r["phase"], r["step"]) for r in records if r["phase"] in ("rl", "distill", "preference")]
    assert order == [*[("rl", i) for i in range(1, 5)], *[("distill", i) for i in range(1, 5)],
                     *[("preference", i) for i in range(1, 9)]]
    versions = [r["version"] for r in records if r["phase"] in ("rl", "distill", "preference")]
    assert versions == sorted(versions) and len(set(versions)) >= 12   # the rounds trained and pushed weights
    assert [(r["kind"], r["after_step"]) for r in result["rounds"]] == [("distill", 4), ("preference", 4)]
    assert json.loads((spec.run_dir / "summary.json").read_text()) == result


def test_distillation_cuts_the_rechecks_and_shortens_held_out_correct_responses(finished):
    _, result, records = finished
    steps = [r for r in records if r["phase"] == "distill"]
    assert all(r["episodes"] == 16 * 8 and 0 < r["targets"] <= 16 and r["correct"] >= r["targets"] for r in steps)
    assert sum(r["pruned"] for r in steps) > 0 and all(r["pruned_tokens"] >= 0 for r in steps)
    # the learner trained on exactly the targets: one shortest correct sample per prompt
    assert all(r["tokens"] == pytest.approx(r["targets"] * r["target_tokens"]) for r in steps)
    before, after = result["rounds"][0]["before"], result["rounds"][0]["after"]
    # the calculator's correct replies lose their re-check (tool call ~20 tokens, answer ~4, re-check ~12)
    assert after["correct_tokens/calculator"] < 0.85 * before["correct_tokens/calculator"]
    assert after["reward"] > before["reward"] - 0.1           # shorter, not broken


def test_preference_round_trains_pairs_against_the_policy_at_its_start(finished):
    _, result, records = finished
    steps = [r for r in records if r["phase"] == "preference"]
    assert all(r["episodes"] == 32 * 8 and r["pairs"] > 0 and "rubric" in r for r in steps)
    # the policy at the round's start is the DPO reference: the first step starts every pair at z = 0
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5) and steps[0]["pair_accuracy"] == 0.0
    assert any(r["loss"] != pytest.approx(math.log(2), abs=1e-4) for r in steps[1:])   # the policy moved
    before, after = result["rounds"][1]["before"], result["rounds"][1]["after"]
    assert {"rubric", "sampled_rubric"} <= set(before) & set(after)
