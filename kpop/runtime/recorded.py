"""The RunSpec a checkpoint was trained with, as far as its episodes and engines depend on it.

`find_run_spec(checkpoint)` locates the resolved spec the run wrote next to its checkpoints
(`<run_dir>/checkpoints/<step>/` -> `<run_dir>/spec.json`), or None. `recorded_spec(checkpoint)`
validates the sections of that record that decide how an episode runs and how an engine is set up
(`RECORDED_SECTIONS`) into a RunSpec; every other section keeps its default, so a record whose
model folder has moved, or one that a later check would reject, still serves. Without a record it
is the default RunSpec. `kpop eval` and `kpop serve` build their runtime configuration from it.
"""

from __future__ import annotations

import json
from pathlib import Path

from kpop.spec import RunSpec, validate_spec

RECORDED_SECTIONS = ("seed", "envs", "rollout", "sandbox")


def find_run_spec(checkpoint: str | Path) -> dict | None:
    folder = Path(checkpoint).resolve()
    for parent in (folder.parent.parent, folder.parent, folder):
        path = parent / "spec.json"
        if path.is_file():
            return json.loads(path.read_text())
    return None


def recorded_spec(checkpoint: str | Path) -> tuple[RunSpec, bool]:
    """The checkpoint's run spec (its recorded sections) and whether a record was found."""
    data = find_run_spec(checkpoint)
    kept = {k: v for k, v in (data or {}).items() if k in RECORDED_SECTIONS}
    return validate_spec(kept, f"{checkpoint} (recorded spec.json)"), data is not None
