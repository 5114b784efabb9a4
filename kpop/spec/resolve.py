"""Checks that need the environment registry: every `envs:` entry names a registered
environment and its options fit that environment's own option model."""

from __future__ import annotations

from kpop.spec.load import Problem, SpecError
from kpop.spec.schema import RunSpec


def check_envs(spec: RunSpec, source: str) -> None:
    from kpop.envs.registry import get_env, validate_options

    problems = []
    for i, entry in enumerate(spec.envs):
        try:
            get_env(entry.name)
        except KeyError as exc:
            problems.append(Problem(f"envs.{i}.name", str(exc.args[0])))
            continue
        try:
            validate_options(entry.name, entry.options)
        except ValueError as exc:
            problems.append(Problem(f"envs.{i}.options", str(exc)))
    if problems:
        raise SpecError(source, problems)
