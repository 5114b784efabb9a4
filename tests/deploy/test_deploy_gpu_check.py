"""deploy/gpu_check.sh --dry-run on a CPU machine: it lists every check, collects every gpu-marked
test, validates the quickstart's overrides, and writes the report skeleton."""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHECKS = ["setup", "cuda", "gpu_tests", "fla_kernels", "fp8_gemm", "hybrid_vllm", "quickstart"]


def gpu_marked_tests() -> set[str]:
    """Names of test functions decorated with pytest.mark.gpu, read from the source (not from pytest)."""
    names = set()
    for path in (REPO / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any("mark.gpu" in ast.unparse(d) for d in node.decorator_list):
                names.add(f"{path.relative_to(REPO).as_posix()}::{node.name}")
    return names


def test_dry_run_lists_every_check_and_every_gpu_test(tmp_path):
    report_path = tmp_path / "gpu" / "report.json"
    out = subprocess.run(["bash", "deploy/gpu_check.sh", "--dry-run", "--report", str(report_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(report_path.read_text())
    assert report["mode"] == "dry-run" and report["budget_s"] == 600
    checks = {c["name"]: c for c in report["checks"]}
    assert [c["name"] for c in report["checks"]][: len(CHECKS)] == CHECKS
    assert sum(checks[name]["timeout_s"] for name in CHECKS) <= 600
    for name in CHECKS:
        assert checks[name]["status"] == "skip" and checks[name]["command"], name
        assert f"{name} (timeout" in out.stdout
    for name in ("preflight_helpers", "preflight_gpu_tests", "preflight_quickstart_spec"):
        assert checks[name]["status"] == "pass", checks[name]
    for helper in ("cuda", "fla_kernels", "fp8_gemm", "hybrid_vllm", "quickstart"):
        assert (REPO / "deploy" / "gpu_checks" / f"{helper}.py").exists()
    collected = {t["nodeid"].split("[")[0] for t in report["gpu_tests"]}
    assert collected == gpu_marked_tests() and len(collected) >= 4
    assert all(t["status"] == "collected" for t in report["gpu_tests"])


def test_report_parses_a_verbose_pytest_run(tmp_path):
    log = tmp_path / "gpu_tests.log"
    log.write_text("tests/quant/test_x.py::test_a[p0] PASSED   [ 50%]\n"
                   "tests/quant/test_x.py::test_b FAILED   [100%]\n"
                   "tests/quant/test_x.py::test_c SKIPPED (needs a CUDA GPU)\nFAILED tests/quant/test_x.py::test_b\n")
    report = tmp_path / "r.json"
    helper = REPO / "deploy" / "gpu_checks" / "report.py"
    for args in (["init", report, "run", "600"], ["tests", report, log], ["finish", report]):
        subprocess.run(["python3", str(helper), *map(str, args)], check=True)
    tests = json.loads(report.read_text())["gpu_tests"]
    assert tests == [{"nodeid": "tests/quant/test_x.py::test_a[p0]", "status": "pass"},
                     {"nodeid": "tests/quant/test_x.py::test_b", "status": "fail"},
                     {"nodeid": "tests/quant/test_x.py::test_c", "status": "skip"}]
