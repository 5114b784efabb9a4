"""`kpop envs list|check NAME`: the registered environments, and the conformance suite on one of them.

`list` shows every environment registered in code (`@register_env`) or through the `kpop.envs`
entry-point group, with where it comes from, plus plugins that failed to load. `check NAME` runs
kpop.envs.conformance on it and exits 1 if any check fails. `--json` prints machine-readable output.
"""

from __future__ import annotations

import argparse
import json

NAME = "envs"
HELP = "List registered environments, or run the conformance suite on one (kpop envs check NAME)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="envs_command", metavar="ACTION", required=True)
    lister = sub.add_parser("list", help="list registered environments (built-in and plugins)")
    lister.add_argument("--json", action="store_true", help="print JSON")
    checker = sub.add_parser("check", help="run the conformance suite on one environment")
    checker.add_argument("name", help="registered environment name")
    checker.add_argument("--options", default="{}", help="environment options as a JSON object")
    checker.add_argument("--seeds", type=int, default=3, help="seeds the episode checks use (default 3)")
    checker.add_argument("--json", action="store_true", help="print JSON")


def _list(as_json: bool) -> int:
    from kpop.envs.registry import list_envs, plugin_errors

    rows = []
    for record in list_envs():
        env_doc = (record.cls.__doc__ or __import__(record.cls.__module__, fromlist=["_"]).__doc__ or "").strip().splitlines()
        rows.append({"name": record.name, "source": record.source, "class": f"{record.cls.__module__}.{record.cls.__qualname__}", "summary": env_doc[0] if env_doc else ""})
    errors = plugin_errors()
    if as_json:
        print(json.dumps({"envs": rows, "plugin_errors": errors}, indent=2))
        return 0
    width = max((len(r["name"]) for r in rows), default=4)
    source_width = max((len(r["source"]) for r in rows), default=6)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['source']:<{source_width}}  {r['summary'][:90]}")
    for name, error in errors.items():
        print(f"failed to load plugin {name}: {error}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from kpop.envs.conformance import run_conformance
    from kpop.envs.registry import get_env

    try:
        options = json.loads(args.options)
        get_env(args.name)
    except (json.JSONDecodeError, KeyError) as exc:
        print(f"error: {exc}")
        return 2
    try:
        results = run_conformance(args.name, options, seeds=max(1, args.seeds))
    except ValueError as exc:  # invalid options
        print(f"error: {exc}")
        return 2
    passed = all(r.passed for r in results)
    if args.json:
        print(json.dumps({"env": args.name, "passed": passed, "checks": [r.__dict__ for r in results]}, indent=2))
    else:
        for r in results:
            print(f"{'PASS' if r.passed else 'FAIL'}  {r.name:<18} {r.detail}")
        print(f"{args.name}: {'all checks passed' if passed else 'some checks FAILED'}")
    return 0 if passed else 1


def run(args: argparse.Namespace) -> int:
    if args.envs_command == "list":
        return _list(args.json)
    return _check(args)
