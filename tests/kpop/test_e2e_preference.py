"""A real run of examples/preference.yaml: does the preference (DPO) round raise the held-out rubric (slow)?

Real actors (the engine, an environment worker, the DeepSpeed learner) on instruction following with
one length rule per request, after a cold start whose annealing mix leaves the policy breaking the
bound on about a quarter of the held-out requests; one RL step, then a preference round of 8 DPO
steps, evaluated on 256 held-out tasks before and after it.

Asserted: the round raises the mean signed rubric score of the held-out tasks (greedy), and the task
score with it; with the rubric's signs flipped (rewarding replies that miss the topic and break the
rule) the same round lowers the task score: the round follows the rubric it is given, it is not
just more training. And the whole sequence in one run (a distillation round added before the
preference round on the same RL step): distillation shortens the correct held-out replies, then the
preference round raises the rubric. Measured over seeds with `benchmarks/preference.py` (README,
Training rounds): greedy rubric +0.257 / +0.312 / +0.253 on seeds 0 / 1 / 2, so the 0.1 margin below
is wide.
"""

from pathlib import Path

import pytest

from kpop.metrics import read_metrics
from kpop.spec import load_spec

pytestmark = pytest.mark.slow

SPEC = Path(__file__).resolve().parents[2] / "examples" / "preference.yaml"
FLIPPED = "learner.preference.rubric_weights={informative: -1.0, constraints: -1.0}"
DISTILL_FIRST = "learner.distill={every: 1, steps: 2, tasks: 16, lr: 1.0e-3}"


def _around_the_round(run_dir: Path, extra: list[str]) -> tuple[dict[str, dict], list[dict]]:
    """Runs the example with `extra` overrides; its evaluations by label and all its records."""
    from kpop.launch import run

    spec = load_spec(SPEC, ["logging.progress=lines", "logging.tensorboard=false", f"run_dir={run_dir}", *extra])
    run(spec)
    records = read_metrics(spec.run_dir)
    evals = {r["label"]: r for r in records if r["phase"] == "eval"}
    return evals, records


def _preference(evals: dict, records: list[dict]) -> tuple[dict, dict, list[dict]]:
    steps = [r for r in records if r["phase"] == "preference"]
    before = evals.get("before_preference", evals.get("after_distill"))
    return before, evals["after_preference"], steps


@pytest.fixture(scope="module")
def as_written(ray_session, tmp_path_factory):
    return _preference(*_around_the_round(tmp_path_factory.mktemp("preference"), []))


@pytest.fixture(scope="module")
def flipped(ray_session, tmp_path_factory):
    return _preference(*_around_the_round(tmp_path_factory.mktemp("preference_flipped"), [FLIPPED]))


@pytest.fixture(scope="module")
def three_stages(ray_session, tmp_path_factory):
    return _around_the_round(tmp_path_factory.mktemp("preference_distill"), [DISTILL_FIRST])


def test_the_round_trains_on_pairs_and_raises_the_held_out_rubric(as_written):
    before, after, steps = as_written
    assert len(steps) == 8 and all(r["pairs"] > 0 for r in steps)
    assert before["rubric"] < 1.95                     # there is something to fix
    assert after["rubric"] > before["rubric"] + 0.1
    assert after["reward"] > before["reward"]


def test_with_the_rubric_flipped_the_round_lowers_the_task_score(flipped):
    before, after, steps = flipped
    assert len(steps) == 8 and all(r["pairs"] > 0 for r in steps)
    assert after["reward"] < before["reward"]


def test_rl_then_distillation_then_preference_in_one_run(three_stages):
    evals, records = three_stages
    assert [r["phase"] for r in records if r["phase"] in ("rl", "distill", "preference")] == [
        "rl", "distill", "distill", *["preference"] * 8]
    # distillation shortens the correct held-out replies (42 -> 16, 41 -> 10, 24 -> 15, 42 -> 9
    # tokens in four runs); its cost in task score varies run to run (-0.011, -0.004, +0.121,
    # -0.164), so only breaking the policy is refused here
    before, after = evals["before_distill"], evals["after_distill"]
    assert after["correct_tokens"] < 0.85 * before["correct_tokens"]
    assert after["reward"] > before["reward"] - 0.3
    # then the preference round closes at least half of what is left below the rubric's ceiling (2:
    # informative + constraints), which distillation leaves at 0.07-0.31 depending on the seed
    before, after, _ = _preference(evals, records)
    assert before["rubric"] < 2.0 and after["rubric"] >= before["rubric"] + 0.5 * (2.0 - before["rubric"])
