"""`kpop merge`: WSM checkpoint merging (average the last N constant-LR checkpoints into one HF folder)."""

from __future__ import annotations

import argparse

NAME = "merge"
HELP = "Merge a window of checkpoints (WSM: an alternative to learning-rate decay) into one HF folder."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders (safetensors), oldest first")
    parser.add_argument("--out", required=True, help="output folder (Hugging Face format)")
    parser.add_argument("--window", type=int, default=None, help="merge only the last N checkpoints (default: all)")
    parser.add_argument("--weighting", choices=["uniform", "linear", "exponential"], default="uniform")
    parser.add_argument("--gamma", type=float, default=0.5, help="decay of the exponential weighting")


def run(args: argparse.Namespace) -> int:
    from kpop.learner.wsm import merge_coefficients, wsm_merge

    n = min(args.window or len(args.checkpoints), len(args.checkpoints))
    coeffs = merge_coefficients(n, args.weighting, args.gamma)
    out = wsm_merge(args.checkpoints, args.out, args.window, args.weighting, args.gamma)
    print(f"merged {n} checkpoint(s) with coefficients {[round(c, 4) for c in coeffs]} -> {out}")
    return 0
