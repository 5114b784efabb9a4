"""`kpop eval CHECKPOINT --env NAME`: pass@1 / pass@k and greedy accuracy on held-out tasks."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

NAME = "eval"
HELP = "Measure a checkpoint's pass@1 / pass@k and greedy accuracy on held-out tasks."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint folder (e.g. RUN_DIR/checkpoints/last)")
    parser.add_argument("--env", dest="envs", action="append", default=[], metavar="NAME",
                        help="environment to evaluate (repeatable; default: the run's environments)")
    parser.add_argument("--tasks", type=int, default=32, metavar="N",
                        help="the run's first N held-out tasks, of the chosen environments (default 32)")
    parser.add_argument("--k", type=int, default=4, metavar="K", help="report pass@1 and pass@K (default 4)")
    parser.add_argument("--samples", type=int, default=None, metavar="N",
                        help="samples per task for the pass@k estimator, N >= K (default K)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature for pass@k (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="held-out task seed (default: the run's seed)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from kpop.eval.runner import EvalConfig, run_eval
    from kpop.eval.table import format_table
    from kpop.spec import SpecError

    if not os.path.isdir(args.checkpoint):
        print(f"error: {args.checkpoint}: not a checkpoint folder", file=sys.stderr)
        return 2
    config = EvalConfig(args.checkpoint, list(args.envs), args.tasks, args.k, args.samples, args.temperature, args.seed)
    try:
        with _stdout_to_stderr():
            result = run_eval(config)
    except (ValueError, SpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_json(), indent=2) if args.json else format_table(result))
    return 0


@contextlib.contextmanager
def _stdout_to_stderr():
    """Route file descriptor 1 to stderr while engines run, so stdout holds only the result.

    vLLM's engine-core process logs to the stdout it inherits; `--json` output must parse.
    """
    import os

    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
