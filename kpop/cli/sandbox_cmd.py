"""`kpop sandbox run [--limits…] -- CMD …`: run one command in the configured sandbox, print JSON.

For users checking their set-up: the sandbox section comes from `--spec` (a RunSpec YAML) or the
defaults, `--backend` and the limit flags override it. Exit status 0 when the result is OK.
"""

from __future__ import annotations

import argparse

NAME = "sandbox"
HELP = "Run a command in the configured sandbox (`kpop sandbox run -- python3 -c 'print(1)'`) and print the result as JSON."

LIMIT_FLAGS = {  # flag -> (spec field, type, help)
    "--wall-s": ("wall_s", float, "wall-clock limit, seconds"),
    "--cpu-s": ("cpu_s", float, "CPU-time limit per process, seconds"),
    "--memory-mib": ("memory_mib", int, "memory limit, MiB"),
    "--max-processes": ("max_processes", int, "process/thread limit"),
    "--max-file-mib": ("max_file_mib", int, "largest writable file, MiB"),
    "--max-output-kib": ("max_output_kib", int, "cap on stdout and on stderr, KiB"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    run_p = sub.add_parser("run", help="run one command and print the result as JSON")
    run_p.add_argument("--spec", help="RunSpec YAML whose `sandbox:` section to use (default: built-in defaults)")
    run_p.add_argument("--backend", choices=("bwrap", "docker", "process"), help="override the backend type")
    run_p.add_argument("--unsafe", action="store_true", help="required with --backend process (no isolation)")
    run_p.add_argument("--file", action="append", default=[], metavar="NAME=PATH", help="copy host file PATH into the work dir as NAME")
    run_p.add_argument("--output", action="append", default=[], metavar="GLOB", help="return work-dir files matching GLOB")
    for flag, (_, kind, text) in LIMIT_FLAGS.items():
        run_p.add_argument(flag, type=kind, help=text)
    run_p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG …]")


def run(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import sys
    from pathlib import Path

    from kpop.envs.sandbox.api import SandboxRequest, SandboxStatus
    from kpop.envs.sandbox.factory import make_pool

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("kpop sandbox run: give a command after --", file=sys.stderr)
        return 2
    spec = _sandbox_spec(args)
    files = {}
    for item in args.file:
        name, _, path = item.partition("=")
        files[name] = Path(path).read_bytes()
    request = SandboxRequest(command=tuple(command), files=files, outputs=tuple(args.output))

    async def go():
        pool = make_pool(spec)
        try:
            return await pool.run(request)
        finally:
            await pool.close()

    result = asyncio.run(go())
    print(json.dumps({"backend": spec.backend.type, **result.to_dict()}, indent=2))
    return 0 if result.status is SandboxStatus.OK else 1


def _sandbox_spec(args: argparse.Namespace):
    from kpop.spec.sandbox import SandboxSpec

    data = {}
    if args.spec:
        from kpop.spec.load import load_spec

        data = load_spec(args.spec).sandbox.model_dump()
    if args.backend:
        data["backend"] = {"type": args.backend, **({"unsafe": args.unsafe} if args.backend == "process" else {})}
    limits = data.setdefault("limits", {})
    for flag, (field, _, _) in LIMIT_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            limits[field] = value
    return SandboxSpec.model_validate(data)
