"""benchmarks/engine_limits.py: the decoding state's traffic counted in the limits (hand-computed)."""

from __future__ import annotations

import pytest
import torch


def test_state_shape_of_a_llama_is_its_keys_and_values_per_column(benchmark, tmp_path):
    from transformers import AutoModelForCausalLM

    from kpop.rollout.builtin.tiny_models import tiny_llama_dir

    limits = benchmark("engine_limits")
    folder = tiny_llama_dir(tmp_path, hidden=64, heads=2, kv_heads=1, layers=3)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    # 3 layers x (keys + values) x 1 kv head x head_dim 32 x 4 bytes; nothing of fixed size
    assert limits.state_shape(model) == limits.StateShape(3 * 2 * 1 * 32 * 4, 0)
    assert limits.state_shape(model.to(torch.bfloat16)) == limits.StateShape(3 * 2 * 32 * 2, 0)


def test_state_shape_of_the_hybrid_is_its_latents_and_lightning_states(benchmark):
    from kpop.rollout.builtin.tiny_models import tiny_hybrid

    limits = benchmark("engine_limits")
    model = tiny_hybrid()
    cfg = model.config
    mla = [cfg.is_mla_layer(i) for i in range(cfg.num_hidden_layers)]
    assert any(mla) and not all(mla)
    column = sum(mla) * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 4
    fixed = (len(mla) - sum(mla)) * cfg.num_attention_heads * cfg.head_dim**2 * 4  # float32 [H, d, d]
    assert limits.state_shape(model) == limits.StateShape(column, fixed)


def test_state_bytes_sum_the_decode_steps(benchmark):
    limits = benchmark("engine_limits")
    shape = limits.StateShape(column_bytes=10, fixed_bytes=100)
    # prompt 3, 3 tokens: decode steps 1 and 2 attend over 4 and 5 columns, each read plus the
    # new one written; the fixed state read and written: (10*5 + 200) + (10*6 + 200), 2 rows
    assert limits.state_bytes(shape, batch=2, prompt_len=3, max_tokens=3) == 2 * (250 + 260)
    assert limits.state_bytes(shape, batch=5, prompt_len=3, max_tokens=1) == 0


def test_limits_add_state_time_and_take_a_sampled_bandwidth_or_step(benchmark):
    limits = benchmark("engine_limits")
    lim = limits.Limits(bandwidth=1e9, bytes_per_token=1e6, state_s={1: 0.01, 4: 0.6}, prompt_len=3, max_tokens=8,
                        seconds={4: 1.0}, flops={4: 1e9}, hot_tokens_per_s={4: 100.0}, step_s={4: 0.1})
    assert lim.tokens_per_s(1) == pytest.approx(1000.0)
    assert lim.tokens_per_s(1, bandwidth=2e9) == pytest.approx(2000.0)
    assert lim.tokens_per_s(4) == pytest.approx(4 * 8 / 1.6)
    # a step's pass sampled beside a run at 0.05 s: the 7 decode steps take 0.35 s less, the
    # prefill (1.0 - 7 * 0.1 = 0.3 s) and the state's 0.6 s stay
    assert lim.tokens_per_s(4, step_s=0.05) == pytest.approx(4 * 8 / (0.3 + 7 * 0.05 + 0.6))
    assert "2.0 GB/s" in lim.describe(1, bandwidth=2e9)
    assert "at 1 GFLOP/s" in lim.describe(4) and "at 2 GFLOP/s" in lim.describe(4, step_s=(0.5 - 0.3) / 7)


def test_a_run_is_judged_by_the_higher_limit_beside_it(benchmark):
    engine = benchmark("engine")
    low, high = engine.Sample(900.0, "slow"), engine.Sample(1000.0, "fast")
    assert max(low, high) is high and max((5.0, low), (5.0, high))[1] is high


def test_wait_quiet_waits_out_a_process_spinning_on_a_core(benchmark):
    """benchmarks/engine.py starts every run on a quiet machine: here a child spins on one core
    for 0.8 s (on a 2-core box, half the CPUs: not quiet at 80% idle), and the wait lasts until it
    ends; with nothing spinning it returns before its timeout."""
    import os
    import subprocess
    import sys
    import time

    engine = benchmark("engine")
    if engine._cpu_times() is None:
        pytest.skip("no /proc/stat")
    if os.cpu_count() > 4:
        pytest.skip("one spinning core leaves more than 80% of this machine's CPUs idle")
    quiet = engine.wait_quiet(timeout_s=3.0)
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 0.8\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.2)
        waited = engine.wait_quiet(timeout_s=3.0)
        assert child.poll() is not None  # it returned only once the child had stopped
    finally:
        child.wait()
    assert waited >= 0.4 and quiet < 3.0  # the quiet machine ended the first wait, not its timeout
