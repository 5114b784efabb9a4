"""Progress display: a live bar on a terminal, plain lines otherwise (CI logs, files)."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    def __init__(self, total: int, mode: str = "auto", label: str = "rl") -> None:
        live = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.off = mode == "off"
        self._bar = None
        if live and not self.off:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self._bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False)
            self._task = self._bar.add_task(label, total=total, info="")
            self._bar.start()
        self.total, self.label = total, label

    def update(self, step: int, info: dict[str, Any]) -> None:
        text = "  ".join(f"{k} {_fmt(v)}" for k, v in info.items())
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=text)
        elif not self.off:
            print(f"[{self.label} {step}/{self.total}] {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
