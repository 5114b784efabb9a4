"""Checks `kpop run` makes after the schema: every `envs:` entry names a registered environment
and its options fit that environment's own option model; settings that bound each other agree (a
sandbox execution must be able to reach its wall clock inside the environment step that waits for
it); and what the run cannot do yet is refused (a fresh hybrid model: kpop.bootstrap builds Llama
models only). The spec a past run recorded (kpop.runtime.recorded) is not held to these checks.
"""

from __future__ import annotations

from kpop.spec.load import Problem, SpecError
from kpop.spec.schema import RunSpec


def check_run(spec: RunSpec, source: str) -> None:
    problems = [*_model_problems(spec), *_env_problems(spec), *_timeout_problems(spec)]
    if problems:
        raise SpecError(source, problems)


def _model_problems(spec: RunSpec) -> list[Problem]:
    if spec.model.type != "hybrid" or spec.model.path is not None:
        return []
    return [Problem("model.path", "kpop run does not build a fresh hybrid model yet (the starting model is built as "
                    "a Llama): give the folder of a bailing_hybrid checkpoint, e.g. one made by `kpop migrate`")]


def _env_problems(spec: RunSpec) -> list[Problem]:
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
    return problems


def _timeout_problems(spec: RunSpec) -> list[Problem]:
    wall, step = spec.sandbox.limits.wall_s, spec.rollout.env_step_timeout_s
    if wall < step:
        return []
    return [Problem("sandbox.limits.wall_s", f"{wall:g} s is not below rollout.env_step_timeout_s ({step:g} s): the "
                    f"environment step that waits for an execution would end the episode before the sandbox "
                    f"reports its timeout; lower it or raise rollout.env_step_timeout_s")]
