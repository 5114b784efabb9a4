"""GPU smoke check, second half: what the shortened quickstart run (deploy/gpu_check.sh) left behind.

    python deploy/gpu_checks/quickstart.py RUN_DIR STEPS

Pass: RUN_DIR/metrics.jsonl has STEPS "rl" records with a finite loss and generated tokens,
an "eval" record after RL, and RUN_DIR/summary.json exists. Prints one JSON line.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def main(run_dir: Path, steps: int) -> int:
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    records = [json.loads(line) for line in lines if line.strip()]
    rl = [r for r in records if r.get("phase") == "rl"]
    problems = []
    if len(rl) != steps:
        problems.append(f"{len(rl)} RL records, expected {steps}")
    if any(not math.isfinite(r.get("loss", float("nan"))) or r.get("gen_tokens", 0) <= 0 for r in rl):
        problems.append("an RL step without a finite loss or without generated tokens")
    if not any(r.get("phase") == "eval" and r.get("label") == "after_rl" for r in records):
        problems.append("no held-out evaluation after RL")
    if not (run_dir / "summary.json").exists():
        problems.append("no summary.json")
    ok = not problems
    step_s = [round(r.get("step_s", 0.0), 2) for r in rl]
    print(json.dumps({"ok": ok, "message": ("quickstart: " + ("; ".join(problems) if problems else
                      f"{len(rl)} RL steps on vLLM + DeepSpeed, step seconds {step_s}")),
                      "rl_steps": len(rl), "step_s": step_s,
                      "reward": [r.get("reward") for r in rl]}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), int(sys.argv[2])))
