"""benchmarks/preference.py: the row read from a run's metrics.jsonl (hand-computed figures) and a
failed run's row."""

from __future__ import annotations

import json
import math


def test_a_runs_row_comes_from_the_evaluations_around_its_preference_round(benchmark, tmp_path):
    bench = benchmark("preference")
    records = [
        {"phase": "eval", "label": "before_rl", "reward": 0.1, "rubric": 0.5, "sampled_rubric": 0.4},
        {"phase": "rl", "step": 1},
        {"phase": "eval", "label": "before_preference", "reward": 0.25, "rubric": 1.5, "sampled_rubric": 1.25},
        {"phase": "preference", "step": 1, "pairs": 7},
        {"phase": "preference", "step": 2, "pairs": 5},
        {"phase": "eval", "label": "after_preference", "reward": 0.75, "rubric": 1.875, "sampled_rubric": 1.5},
        {"phase": "eval", "label": "after_rl", "reward": 0.75, "rubric": 1.875, "sampled_rubric": 1.5},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    got = bench.summarize_run(tmp_path)
    assert got == {"rubric_before": 1.5, "rubric_after": 1.875, "sampled_before": 1.25, "sampled_after": 1.5,
                   "reward_before": 0.25, "reward_after": 0.75, "pairs": 12}
    assert bench.Row(0, 9.0, True, **got).gain == 0.375


def test_a_failed_run_has_no_figures(benchmark):
    failed = benchmark("preference").Row(2, 5.0, False)
    assert math.isnan(failed.gain) and not failed.ok and failed.pairs == 0


def test_after_a_distillation_round_the_evaluation_before_the_preference_round_is_the_one_after_it(benchmark, tmp_path):
    records = [
        {"phase": "rl", "step": 1},
        {"phase": "eval", "label": "before_distill", "reward": 0.1, "rubric": 0.5, "sampled_rubric": 0.4},
        {"phase": "distill", "step": 1},
        {"phase": "eval", "label": "after_distill", "reward": 0.5, "rubric": 1.25, "sampled_rubric": 1.0},
        {"phase": "preference", "step": 1, "pairs": 3},
        {"phase": "eval", "label": "after_preference", "reward": 0.625, "rubric": 1.5, "sampled_rubric": 1.125},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    got = benchmark("preference").summarize_run(tmp_path)
    assert (got["rubric_before"], got["rubric_after"], got["reward_before"], got["pairs"]) == (1.25, 1.5, 0.5, 3)
