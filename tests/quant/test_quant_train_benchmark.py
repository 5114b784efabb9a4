"""benchmarks/quant_train.py: the recipe -> learner settings mapping and the table's statistics
(hand-computed means, standard errors and per-seed gaps)."""

from __future__ import annotations

import math

from kpop.spec.learner import LearnerSpec


def test_recipes_map_to_the_learners_settings(benchmark):
    bench = benchmark("quant_train")
    base = LearnerSpec()
    got = {r: bench.learner_spec(base, r) for r in bench.RECIPES}
    assert (got["fp32"].precision, got["fp32"].quant.recipe) == ("fp32", "bf16")  # quant "bf16" = off
    assert (got["bf16"].precision, got["bf16"].quant.recipe) == ("bf16", "bf16")
    for r in ("ufp4", "nvfp4", "mxfp4"):
        assert (got[r].precision, got[r].quant.recipe) == ("fp32", r)
        assert got[r].quant.keep_first_blocks == base.quant.keep_first_blocks == 1  # the learner's keep rules
        assert got[r].quant.keep_last_blocks == 1 and got[r].quant.keep_lm_head


def test_table_means_standard_errors_and_per_seed_gaps(benchmark):
    bench = benchmark("quant_train")
    runs = [{"model": "m", "recipe": rec, "seed": s, "final_loss": v, "held_out_loss": 2 * v}
            for rec, vals in (("fp32", (1.0, 2.0)), ("ufp4", (1.5, 2.1))) for s, v in zip((0, 1), vals)]
    rows = {r["recipe"]: r for r in bench.summarise(runs)}
    assert math.isclose(rows["fp32"]["mean"], 1.5) and math.isclose(rows["fp32"]["se"], 0.5)
    assert math.isclose(rows["fp32"]["gap"], 0.0) and math.isclose(rows["fp32"]["gap_se"], 0.0, abs_tol=1e-12)
    assert math.isclose(rows["ufp4"]["mean"], 1.8) and math.isclose(rows["ufp4"]["se"], 0.3)
    # per-seed gaps 0.5 and 0.1: mean 0.3, s.d. 0.2828, s.e. 0.2 (smaller than the two means' s.e.s)
    assert math.isclose(rows["ufp4"]["gap"], 0.3) and math.isclose(rows["ufp4"]["gap_se"], 0.2)
    held = {r["recipe"]: r for r in bench.summarise(runs, "held_out_loss")}
    assert math.isclose(held["ufp4"]["gap"], 0.6) and math.isclose(held["ufp4"]["gap_se"], 0.4)
    one = bench.mean_se([3.0])
    assert one[0] == 3.0 and math.isnan(one[1])
    text = bench.table(runs)
    assert "| m | fp32 | 2 | 1.5000 ± 0.5000 | - | 3.0000 ± 1.0000 | - |" in text
    assert "| m | ufp4 | 2 | 1.8000 ± 0.3000 | +0.3000 ± 0.2000 | 3.6000 ± 0.6000 | +0.6000 ± 0.4000 |" in text
