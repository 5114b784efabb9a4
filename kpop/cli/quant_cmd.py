"""`kpop quant`: the FP4 (UFP4 / NVFP4 / MXFP4) tools of kpop.quant.

`kpop quant analyze [--json]` measures shrinkage: relative MSE, gain error GS = β - 1 and signed
error per grid (E2M1, uniform INT4) and RHT size on Gaussian and Student-t data and on the tiny
random-init Llama's weights, activations and gradients, then the GEMM-level gain β (and β^L) of
each recipe's three GEMMs. Exit status 0 when every qualitative claim of the UFP4 paper holds on
the synthetic data, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json

NAME = "quant"
HELP = "FP4 training tools: `kpop quant analyze` reports shrinkage bias per grid, RHT and recipe."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="quant_command", metavar="ACTION", required=True)
    analyze = sub.add_parser("analyze", help="rel. MSE, gain error, signed error and GEMM gain β per grid and recipe")
    analyze.add_argument("--json", action="store_true", help="print the report as JSON")
    analyze.add_argument("--rows", type=int, default=256, help="rows of each synthetic tensor (default 256)")
    analyze.add_argument("--cols", type=int, default=1024, help="columns (contraction axis) of each synthetic tensor")
    analyze.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and the model")
    analyze.add_argument("--depth", type=int, default=24, help="L in the compounded gain β^L (default 24)")
    analyze.add_argument("--no-model", action="store_true", help="skip the tiny-model weights/activations/gradients")


def _fmt(v) -> str:
    return f"{v:+.5f}" if isinstance(v, float) else str(v)


def _table(rows: list[dict], columns: list[str]) -> str:
    cells = [columns] + [[_fmt(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _print_report(report: dict) -> None:
    cfg = report["config"]
    print(f"Operand quantisation ({cfg['block']} blocks, round-to-nearest; rht 0 = none; gain_se = std. error of gain_error)")
    print(_table(report["operands"], ["source", "grid", "rht", "rel_mse", "gain_error", "gain_se", "signed_error"]))
    print()
    depth_key = f"beta^{cfg['depth']}"
    print("GEMM gain per recipe (beta = <Y_q, Y>/<Y, Y>)")
    print(_table(report["gemms"], ["source", "recipe", "gemm", "beta", "rel_mse", depth_key]))
    print()
    print("Claims (synthetic data)")
    for claim, holds in report["claims"].items():
        print(f"  [{'ok' if holds else 'FAIL'}] {claim}")


def run(args: argparse.Namespace) -> int:
    from kpop.quant.analysis import analyze

    report = analyze(rows=args.rows, cols=args.cols, seed=args.seed, with_model=not args.no_model, depth=args.depth)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return 0 if all(report["claims"].values()) else 1
