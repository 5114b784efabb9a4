"""The CLI: help is cheap (no heavy imports), dry-run prints the plan, bad specs exit 2 cleanly."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def kpop(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kpop.cli.main", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_help_builds_the_parser_without_heavy_imports():
    code = ("import sys; from kpop.cli.main import build_parser; build_parser(); "
            "heavy = [m for m in ('torch', 'ray', 'vllm', 'deepspeed', 'transformers') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_help_lists_the_commands():
    out = kpop("--help").stdout
    for command in ("run", "envs", "serve", "version"):
        assert command in out


def test_dry_run_prints_resolved_spec_and_plan():
    result = kpop("run", "examples/quickstart.yaml", "--dry-run", "--set", "train.steps=3", "--set", "sandbox.limits.wall_s=1",
                  "--set", "sandbox.pool_size=2")
    assert result.returncode == 0, result.stderr
    assert "steps: 3" in result.stdout and "3 RL steps" in result.stdout
    assert "1 x vllm" in result.stdout
    # the sandbox every environment worker configures, with the limits its pool applies
    [sandbox] = [line for line in result.stdout.splitlines() if line.strip().startswith("sandbox:") and "bwrap" in line]
    assert "2 at once per worker" in sandbox and "wall 1 s" in sandbox and "memory 512 MiB" in sandbox


def test_dry_run_of_the_hybrid_example_shows_its_engine_and_the_resolved_fp4_recipe():
    result = kpop("run", "examples/hybrid.yaml", "--dry-run", "--set", "learner.quant.recipe=ufp4")
    assert result.returncode == 0, result.stderr
    assert "fresh hybrid" in result.stdout and "1 x builtin" in result.stdout
    quant = result.stdout[result.stdout.index("  quant:"):result.stdout.index("  schedule:")]
    assert "ufp4:" in quant and "fprop: x uniform 1x16 e4m3 rtn, w uniform 1x16 e4m3 rtn; RHT 16" in quant
    assert "dgrad: dy uniform 1x16 e4m3 sr" in quant
    # the tiny preset: MoE layers 1-3 (8 experts), the first and last blocks and the LM head kept
    assert "60 of 98 linear layers quantised" in quant and "model.layers.0.* (6), model.layers.3.* (31), lm_head" in quant
    assert "1 x builtin in float32" in result.stdout
    plain = kpop("run", "examples/hybrid.yaml", "--dry-run", "--set", "rollout.engine.dtype=bfloat16")
    assert "quant:     off (learner.quant.recipe bf16)" in plain.stdout and "1 x builtin in bfloat16" in plain.stdout


def test_bad_spec_exits_2_with_paths_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner:\n  lr_rate: 1\nenvs:\n  - name: calculater\n")
    result = kpop("run", str(bad), "--dry-run")
    assert result.returncode == 2
    assert "learner.lr_rate" in result.stderr and "did you mean 'lr'" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_env_is_reported_after_schema_checks(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("envs:\n  - name: calculater\n")
    result = kpop("run", str(bad), "--dry-run")
    assert result.returncode == 2 and "envs.0.name" in result.stderr and "calculator" in result.stderr
    assert "Traceback" not in result.stderr


def test_version():
    result = kpop("version")
    assert result.returncode == 0 and result.stdout.startswith("kpop ")
