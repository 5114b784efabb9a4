"""`kpop report RUN_DIR [RUN_B]`: plots (PNG) and a self-contained HTML page of one run, or two overlaid."""

from __future__ import annotations

import argparse
import sys

NAME = "report"
HELP = "Render a run's metrics as PNG plots and one self-contained HTML page (two runs: overlaid)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folder(s) holding metrics.jsonl; a second one is overlaid")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default RUN_DIR/report, or RUN_A/report_vs_RUN_B)")


def run(args: argparse.Namespace) -> int:
    from kpop.report.build import build_report
    from kpop.report.runs import RunNotFound

    try:
        report = build_report(args.runs, args.out)
    except RunNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {report.html}")
    for png in report.pngs:
        print(f"  {png}")
    return 0
