"""A finished (or running) run as the report sees it: its metrics, resolved spec and summary.

Contract: `load_run(path)` reads `<run_dir>/metrics.jsonl` (required, may be partial: a run still
writing is fine), `spec.json` and `summary.json` (both optional). `RunData.series` returns only
numeric values, in file order, so a key that some records lack simply has fewer points.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kpop.metrics import read_metrics


class RunNotFound(Exception):
    pass


@dataclass(frozen=True)
class RunData:
    name: str
    path: Path
    records: list[dict[str, Any]]
    spec: dict[str, Any] | None
    summary: dict[str, Any] | None

    def phase(self, phase: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("phase") == phase]

    def series(self, phase: str, key: str) -> tuple[list[int], list[float]]:
        steps, values = [], []
        for r in self.phase(phase):
            v = r.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                steps.append(int(r["step"]))
                values.append(float(v))
        return steps, values

    def keys(self, phase: str, prefix: str) -> list[str]:
        """Sorted keys of `phase` records that start with `prefix` (e.g. "reward/")."""
        return sorted({k for r in self.phase(phase) for k in r if k.startswith(prefix)})

    def eval_by_label(self) -> dict[str, dict[str, Any]]:
        """The last eval record of each label (before_rl, during_rl, after_rl)."""
        return {r.get("label", f"step {r['step']}"): r for r in self.phase("eval")}

    def staleness_total(self) -> list[int]:
        """Staleness histogram summed over every RL step."""
        total: list[int] = []
        for r in self.phase("rl"):
            for gap, count in enumerate(r.get("staleness_hist") or []):
                if gap >= len(total):
                    total.extend([0] * (gap + 1 - len(total)))
                total[gap] += int(count)
        return total


def load_run(path: str | Path, name: str | None = None) -> RunData:
    run_dir = Path(path)
    if not (run_dir / "metrics.jsonl").is_file():
        raise RunNotFound(f"{run_dir}: no metrics.jsonl (not a run folder, or the run has not started)")
    spec = _read_json(run_dir / "spec.json")
    return RunData(name=name or (spec or {}).get("name") or run_dir.name, path=run_dir,
                   records=read_metrics(run_dir), spec=spec, summary=_read_json(run_dir / "summary.json"))


def load_runs(paths: list[str | Path]) -> list[RunData]:
    """Runs with distinct display names (the folder name is appended when spec names collide)."""
    runs = [load_run(p) for p in paths]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        runs = [load_run(r.path, f"{r.name} ({r.path.name})") for r in runs]
        if len({r.name for r in runs}) < len(runs):
            runs = [load_run(r.path, f"{r.name} #{i + 1}") for i, r in enumerate(runs)]
    return runs


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists to dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    if isinstance(data, list) and any(isinstance(x, (dict, list)) for x in data):
        out = {}
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): data}


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None
