"""benchmarks/model_scaling.py: the crossover rule and a tiny run of the table."""

from __future__ import annotations


def test_crossover_rule_and_tiny_run(capsys, benchmark):
    bench = benchmark("model_scaling")
    rows = [{"T": 1, "lightning_s": 2.0, "sdpa_s": 1.0}, {"T": 2, "lightning_s": 1.0, "sdpa_s": 1.5},
            {"T": 4, "lightning_s": 3.0, "sdpa_s": 2.0}, {"T": 8, "lightning_s": 2.0, "sdpa_s": 4.0}]
    assert bench.crossover(rows) == 8
    assert bench.crossover(rows[:1]) is None
    assert bench.main(["--lengths", "64", "128", "--heads", "2", "--head-dim", "8", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "crossover length" in out and "kv cache MiB" in out
    row = bench.measure(256, 2, 8, 1, "cpu")
    assert row["lightning_state_mib"] == bench.measure(512, 2, 8, 1, "cpu")["lightning_state_mib"]  # constant state
    assert row["kv_cache_mib"] * 2 == bench.measure(512, 2, 8, 1, "cpu")["kv_cache_mib"]  # KV cache grows with T
