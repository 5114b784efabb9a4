"""Progress display: a live bar on a terminal, plain lines otherwise (CI logs, files).

`Progress(total, mode, label)`; mode "auto" picks the bar when stderr is a terminal, "bar" and
"lines" force one, "off" shows nothing. `update(step, info)` takes either a few chosen values or a
whole metrics record (kpop.metrics): known keys are shown first, in a fixed order, under short
names (reward, tok/s, stale, mismatch, ...); from a whole record (one with a "phase" key) only
the known keys are shown, otherwise every other numeric value follows under its own name.
Both displays show step/total and the ETA (mean seconds per completed step × steps left).
"""

from __future__ import annotations

import sys
import time
from typing import Any

# record key -> short display name, in display order
DISPLAY = {
    "reward": "reward",
    "loss": "loss",
    "gen_tokens_per_s": "tok/s",
    "tok/s": "tok/s",
    "staleness_mean": "stale",
    "mismatch": "mismatch",
    "pass_rate": "pass",
    "step_s": "step_s",
}
HIDDEN = {"phase", "step", "time", "label"}


class Progress:
    def __init__(self, total: int, mode: str = "auto", label: str = "rl") -> None:
        live = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.off = mode == "off"
        self.total, self.label = total, label
        self._t0 = time.monotonic()
        self._bar = None
        if live and not self.off:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                            transient=False)
            self._task = self._bar.add_task(label, total=total, info="")
            self._bar.start()

    def update(self, step: int, info: dict[str, Any]) -> None:
        text = format_info(info)
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=text)
        elif not self.off:
            eta = self.eta_s(step)
            tail = f"  eta {format_duration(eta)}" if eta is not None else ""
            print(f"[{self.label} {step}/{self.total}] {text}{tail}", file=sys.stderr, flush=True)

    def eta_s(self, step: int, now: float | None = None) -> float | None:
        """Seconds left at the mean pace so far; None before the first completed step."""
        now = time.monotonic() if now is None else now
        if step <= 0:
            return None
        left = max(self.total - step, 0)
        return (now - self._t0) / step * left

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def format_info(info: dict[str, Any]) -> str:
    shown: dict[str, str] = {}
    for key, name in DISPLAY.items():
        if key in info and name not in shown:
            shown[name] = _fmt(info[key])
    if "phase" not in info:
        for key, value in info.items():
            if key not in DISPLAY and key not in HIDDEN and not isinstance(value, (list, dict)):
                shown[key] = _fmt(value)
    return "  ".join(f"{k} {v}" for k, v in shown.items())


def format_duration(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
