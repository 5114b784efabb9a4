"""Run metrics: one JSON object per line in `<run_dir>/metrics.jsonl`.

Each record has `phase` ("sft", "eval", "rl"), `step` and `time` (seconds since the run started),
plus the phase's numbers. The file is append-only; a resumed run continues it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class MetricsWriter:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()

    def write(self, phase: str, step: int, values: dict[str, Any]) -> dict[str, Any]:
        record = {"phase": phase, "step": step, "time": round(time.time() - self.t0, 3), **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        return record


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
