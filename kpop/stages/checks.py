"""Which environments a round draws its prompts from, and the spec problems that needs the
environment registry to see (`kpop run` reports them with the other run checks, kpop.spec.resolve).

A distillation round draws from every environment of the run, by weight (every family reports a
task score). A preference round draws only from those whose class declares a reward part its
rubric weighs (AgentEnv.reward_parts), by weight: samples with no rubric part all score 0 and make
no pair. A preference round with no such environment is refused, naming the parts on both sides.
"""

from __future__ import annotations

from kpop.spec import RunSpec
from kpop.spec.envs import EnvEntrySpec
from kpop.spec.load import Problem


def round_envs(spec: RunSpec, kind: str) -> list[EnvEntrySpec]:
    if kind == "distill":
        return list(spec.envs)
    from kpop.envs.registry import get_env

    weights = spec.learner.preference.rubric_weights
    return [e for e in spec.envs if set(get_env(e.name).cls.reward_parts) & set(weights)]


def round_problems(spec: RunSpec) -> list[Problem]:
    from kpop.envs.registry import get_env

    if not spec.learner.preference.every:
        return []
    try:
        declared = {e.name: get_env(e.name).cls.reward_parts for e in spec.envs}
    except KeyError:
        return []   # an unknown environment is reported by the env checks
    if round_envs(spec, "preference"):
        return []
    weighed = ", ".join(sorted(spec.learner.preference.rubric_weights))
    reports = "; ".join(f"{name}: {', '.join(parts) or 'no declared parts'}" for name, parts in declared.items())
    return [Problem("learner.preference.rubric_weights", f"no environment of the run reports a part these weights "
                    f"score ({weighed}); they report {reports}. A preference round scores samples by these parts: "
                    f"weigh parts the run's environments report, or add one that reports them (e.g. instructions)")]
