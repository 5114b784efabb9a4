"""The `kpop` command line.

Each sub-command lives in its own module exposing `NAME`, `HELP`, `add_arguments(parser)` and
`run(args) -> int`. Those modules import only the standard library at top level; heavy libraries
(torch, ray, vllm) are imported inside `run`, after the arguments are parsed, so `kpop --help`
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "kpop.cli.run_cmd",
    "kpop.cli.envs_cmd",
    "kpop.cli.serve_cmd",
    "kpop.cli.version_cmd",
    "kpop.cli.migrate_cmd",
    "kpop.cli.quant_cmd",
    "kpop.cli.sandbox_cmd",
    "kpop.cli.merge_cmd",
    "kpop.cli.report_cmd",
    "kpop.cli.eval_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kpop", description="KPop: asynchronous agentic RL post-training.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
