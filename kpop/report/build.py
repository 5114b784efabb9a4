"""`build_report(run_dirs, out_dir)`: the whole of `kpop report`, callable from Python.

Contract: loads each run (kpop.report.runs), writes every plot of kpop.report.plots.PLOTS as a
PNG into `out_dir` and `out_dir/index.html` referencing all of them; returns a `Report` naming
the files. The default `out_dir` is `<first run>/report` for one run and
`<first run>/report_vs_<second run's folder name>` when comparing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kpop.report.runs import RunData, load_runs


@dataclass(frozen=True)
class Report:
    html: Path
    pngs: list[Path]
    runs: list[RunData]


def default_out_dir(run_dirs: list[str | Path]) -> Path:
    first = Path(run_dirs[0])
    if len(run_dirs) == 1:
        return first / "report"
    return first / ("report_vs_" + "_".join(Path(p).resolve().name for p in run_dirs[1:]))


def build_report(run_dirs: list[str | Path], out_dir: str | Path | None = None) -> Report:
    from kpop.report.html import render_html
    from kpop.report.plots import render_plots

    runs = load_runs(list(run_dirs))
    out = Path(out_dir) if out_dir is not None else default_out_dir(run_dirs)
    plots = render_plots(runs, out)
    page = out / "index.html"
    page.write_text(render_html(runs, plots))
    return Report(page, [p.path for p in plots], runs)
