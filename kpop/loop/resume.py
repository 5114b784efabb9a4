"""Finding and reading the checkpoint a run resumes from, and trimming the ledger to it.

A checkpoint is a resume point only once its state file is written (`scheduler_state.json` for
the KPop loop, `run_state.json` for the synchronous loop; both are written before
`checkpoints/last` moves to it). `find_checkpoint` prefers `last`; if the link is missing (killed
between removing and re-creating it) the newest step folder with the state file is used.
"""

from __future__ import annotations

import json
from pathlib import Path

from kpop.metrics import read_metrics
from kpop.scheduler.state import STATE_FILE, SchedulerState

RUN_STATE = "run_state.json"  # {"step", "sampler_position"}: every checkpoint has it


def find_checkpoint(run_dir: Path, marker: str = STATE_FILE) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    last = root / "last"
    if (last / marker).is_file():
        return last.resolve()
    folders = sorted(p for p in root.glob("step_*") if (p / marker).is_file()) if root.is_dir() else []
    return folders[-1] if folders else None


def load_state(folder: Path) -> SchedulerState:
    return SchedulerState.model_validate_json((folder / STATE_FILE).read_text())


def previous_eval(run_dir: Path, label: str) -> dict[str, float]:
    for rec in reversed(read_metrics(run_dir)):
        if rec["phase"] == "eval" and rec.get("label") == label:
            return {k: v for k, v in rec.items() if k not in ("phase", "step", "time", "label")}
    return {}


def truncate_ledger(run_dir: Path, step: int) -> None:
    """Drop ledger lines of steps after `step`: their training was lost with the killed process."""
    path = Path(run_dir) / "ledger.jsonl"
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)
