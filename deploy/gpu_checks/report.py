"""The JSON report of deploy/gpu_check.sh (standard library only: it runs before any set-up).

    python3 report.py init REPORT MODE BUDGET_S            a fresh report (mode: run | dry-run)
    python3 report.py add REPORT NAME STATUS SECONDS TIMEOUT_S LOG [COMMAND]
    python3 report.py tests REPORT FILE                    the gpu-marked tests, from the output of
                                                           pytest --collect-only -q or pytest -v
    python3 report.py finish REPORT

Report: {"mode", "started", "finished", "budget_s", "seconds", "machine", "checks": [...],
"gpu_tests": [...]}. A check is {"name", "status" (pass | fail | skip), "seconds", "timeout_s",
"message", "command", "details"}: `message` is the last non-empty line of the check's log, and
`details` the JSON object on that line when the check's helper printed one (every helper in
deploy/gpu_checks/ ends with one). A gpu test is {"nodeid", "status"}: "collected" from a
listing, pass | fail | skip from a verbose run.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def machine() -> dict:
    gpus = None
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        gpus = [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else None
    return {"host": platform.node(), "python": platform.python_version(), "gpus": gpus}


def last_line(log: Path) -> tuple[str, dict | None]:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    if not lines:
        return "", None
    try:
        details = json.loads(lines[-1])
    except ValueError:
        return lines[-1][-500:], None
    if not isinstance(details, dict):
        return lines[-1][-500:], None
    return details.get("message", lines[-1][-500:]), details


OUTCOMES = {"PASSED": "pass", "XPASS": "pass", "FAILED": "fail", "ERROR": "fail", "SKIPPED": "skip", "XFAIL": "skip"}


def parse_tests(path: Path) -> list[dict]:
    """Node ids from `pytest --collect-only -q` ("collected") or `pytest -v` ("nodeid PASSED ...")."""
    out: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        words = line.split()
        if not words or "::" not in words[0] or not words[0].startswith("tests/"):
            continue
        status = OUTCOMES.get(words[1], "collected") if len(words) > 1 else "collected"
        if out.get(words[0]) in (None, "collected", "pass"):  # an ERROR in teardown follows PASSED
            out[words[0]] = status
    return [{"nodeid": k, "status": v} for k, v in out.items()]


def main(argv: list[str]) -> int:
    cmd, path = argv[0], Path(argv[1])
    if cmd == "init":
        path.parent.mkdir(parents=True, exist_ok=True)
        report = {"mode": argv[2], "started": now(), "t0": time.time(), "budget_s": float(argv[3]),
                  "machine": machine(), "checks": [], "gpu_tests": []}
    else:
        report = json.loads(path.read_text())
    if cmd == "add":
        name, status, seconds, timeout_s, log = argv[2:7]
        message, details = last_line(Path(log))
        report["checks"].append({"name": name, "status": status, "seconds": round(float(seconds), 1),
                                 "timeout_s": float(timeout_s), "message": message,
                                 "command": argv[7] if len(argv) > 7 else "", "details": details, "log": log})
    elif cmd == "tests":
        report["gpu_tests"] = parse_tests(Path(argv[2]))
    elif cmd == "finish":
        report["finished"] = now()
        report["seconds"] = round(time.time() - report["t0"], 1)
    elif cmd != "init":
        raise SystemExit(f"unknown command {cmd!r}")
    path.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
