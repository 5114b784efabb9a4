"""benchmarks/families.py: the row read from a run's metrics.jsonl (hand-computed figures), the
example each family runs, and a failed run's row."""

from __future__ import annotations

import json
import math
from pathlib import Path


def test_a_runs_row_comes_from_its_evaluations_and_rl_steps(benchmark, tmp_path):
    bench = benchmark("families")
    records = [
        {"phase": "sft", "step": 1, "loss": 2.0},
        {"phase": "eval", "label": "before_rl", "reward": 0.25, "sampled_reward": 0.125},
        {"phase": "rl", "step": 1, "gen_tokens": 10.0, "episodes": 4.0, "gen_s": 2.0, "step_s": 3.0},
        {"phase": "rl", "step": 2, "gen_tokens": 30.0, "episodes": 2.0, "gen_s": 1.0, "step_s": 5.0},
        {"phase": "eval", "label": "after_rl", "reward": 0.5, "sampled_reward": 0.375},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    got = bench.summarize_run(tmp_path)
    # 40 + 60 generated tokens over 3 s of generation and 6 episodes; steps of 3 s and 5 s
    assert got == {"greedy_before": 0.25, "greedy_after": 0.5, "sampled_before": 0.125, "sampled_after": 0.375,
                   "step_s": 4.0, "gen_tokens_per_s": 100 / 3, "tokens_per_episode": 100 / 6}
    row = bench.Row("search", 0, 12.0, True, **got)
    assert row.gain == 0.25


def test_every_family_has_its_example_and_a_failed_run_has_no_figures(benchmark):
    bench = benchmark("families")
    examples = Path(bench.__file__).resolve().parents[1] / "examples"
    assert all((examples / name).is_file() for name in bench.EXAMPLES.values())
    failed = bench.Row("coding", 1, 5.0, False)
    assert math.isnan(failed.gain) and not failed.ok
