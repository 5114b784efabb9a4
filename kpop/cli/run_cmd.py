"""`kpop run SPEC`: validate a YAML spec (plus --set overrides) and launch the run."""

from __future__ import annotations

import argparse
import sys

NAME = "run"
HELP = "Launch an RL run from a YAML spec (embedded defaults when no spec is given)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", help="YAML run spec (e.g. examples/quickstart.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, e.g. --set learner.lr=1e-4 (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="validate, print the resolved spec and plan, start nothing")


def run(args: argparse.Namespace) -> int:
    from kpop.spec import SpecError, load_spec
    from kpop.spec.resolve import check_run

    try:
        spec = load_spec(args.spec, args.overrides)
        check_run(spec, args.spec or "<embedded defaults>")
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from kpop.launch import plan

    if args.dry_run:
        import yaml

        print(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False).rstrip())
        print()
        print(plan(spec))
        return 0
    return _launch(spec)


def _launch(spec) -> int:
    import logging

    from kpop.launch import plan, run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(plan(spec), file=sys.stderr)
    result = run(spec)
    before, after = result["before_rl"], result["after_rl"]
    print(f"held-out reward, greedy:  before RL {before['reward']:.3f}, after RL {after['reward']:.3f} "
          f"({int(after['episodes'])} tasks)")
    print(f"held-out reward, sampled: before RL {before['sampled_reward']:.3f}, after RL {after['sampled_reward']:.3f} "
          f"(temperature {spec.rollout.sampling.temperature:g}, one sample per task)")
    print(f"checkpoint: {spec.run_dir}/checkpoints/last")
    return 0
