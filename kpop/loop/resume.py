"""Finding and reading the checkpoint a run resumes from, and trimming the ledger to it.

A checkpoint is a resume point only once its state file is written (`scheduler_state.json` for
the KPop loop, `run_state.json` for the synchronous loop). kpop.launch.checkpoint writes a
checkpoint into `step_N.partial` and renames it to `step_N` when complete, then moves
`checkpoints/last` to it; saving a step again swaps the older `step_N` aside to `step_N.old` for an
instant. `find_checkpoint` prefers `last`; if it names no complete folder (a kill inside that swap)
the newest complete `step_N` is used, or `step_N.old` where its `step_N` is not complete yet. A
`.partial` folder is never a resume point.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from kpop.metrics import read_metrics
from kpop.scheduler.state import STATE_FILE, SchedulerState

RUN_STATE = "run_state.json"  # {"step", "sampler_position"}: every checkpoint has it


_STEP_FOLDER = re.compile(r"step_(\d+)(\.old)?")


def find_checkpoint(run_dir: Path, marker: str = STATE_FILE) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    last = root / "last"
    if (last / marker).is_file():
        return last.resolve()
    complete = []  # (step, is the complete step_N itself, folder)
    for p in root.iterdir() if root.is_dir() else ():
        match = _STEP_FOLDER.fullmatch(p.name)
        if match and (p / marker).is_file():
            complete.append((int(match.group(1)), match.group(2) is None, p))
    return max(complete)[2] if complete else None


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
