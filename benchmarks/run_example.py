"""One real `kpop run SPEC --set ...` in a fresh run directory, for the benchmarks that run examples.

`run_spec` removes `run_dir`, runs the CLI from the repository root with `seed`, `run_dir` and
line progress set (then `overrides`, which win), writes its output to `log`, and returns whether it
exited 0 and its wall-clock in seconds. A failed run is reported on stderr and never raises: a
benchmark keeps its other rows.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_spec(spec: Path, seed: int, run_dir: Path, log: Path, overrides: list[str]) -> tuple[bool, float]:
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [str(REPO / ".venv" / "bin" / "kpop"), "run", str(spec)]
    for item in (f"seed={seed}", f"run_dir={run_dir}", "logging.progress=lines", *overrides):
        cmd += ["--set", item]
    t0 = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if code != 0:
        print(f"{spec.name} seed {seed}: kpop run failed (exit {code}); see {log}", file=sys.stderr)
    return code == 0, wall
