"""Checks `kpop run` makes after the schema: every `envs:` entry names a registered environment
and its options fit that environment's own option model; settings that bound each other agree (a
sandbox execution must be able to reach its wall clock inside the environment step that waits for
it); the model fits the run: a `model.path` checkpoint is of `model.type`, an explicit vLLM engine
can run the model here (not the hybrid on CPU), a fresh hybrid model's training state fits this
machine's memory, an episode's token budget fits the model's context (engines refuse longer prompts). The spec a past run recorded (kpop.runtime.recorded) is not held to these checks.
"""

from __future__ import annotations

import json
import os

from kpop.spec.load import Problem, SpecError
from kpop.spec.schema import RunSpec

TRAIN_BYTES_PER_PARAM = 16


def check_run(spec: RunSpec, source: str) -> None:
    from kpop.stages.checks import round_problems

    problems = [*_model_problems(spec), *_context_problems(spec), *_env_problems(spec), *_timeout_problems(spec),
                *round_problems(spec)]
    if problems:
        raise SpecError(source, problems)


def _model_problems(spec: RunSpec) -> list[Problem]:
    from kpop.rollout.engine_choice import HYBRID_TYPES, facts_from_checkpoint, vllm_cannot_run
    from kpop.runtime.build import model_facts

    model, eng = spec.model, spec.rollout.engine
    if model.path is not None:
        try:
            found = facts_from_checkpoint(model.path).model_type
        except FileNotFoundError as exc:
            return [Problem("model.path", f"{exc}: give a Hugging Face checkpoint folder")]
        hybrid = found in HYBRID_TYPES
        if hybrid != (model.type == "hybrid"):
            want = "hybrid" if hybrid else "llama"
            return [Problem("model.type", f"{model.type!r} does not match the checkpoint at model.path ({model.path} is a "
                            f"{found!r} model): set model.type: {want}, or give a {model.type} checkpoint")]
    problems = []
    if eng.type == "vllm":
        why = vllm_cannot_run(model_facts(spec), gpu=eng.num_gpus > 0)
        if why:
            problems.append(Problem("rollout.engine.type", f"vllm cannot run this model here: {why}; set "
                                    f"rollout.engine.type: builtin (or auto, which picks it), or give the engines "
                                    f"GPUs (rollout.engine.num_gpus)"))
    if model.type == "hybrid" and model.path is None:
        problems += _size_problems(spec)
    return problems


def model_context(spec: RunSpec) -> int | None:
    """Longest sequence the run's model accepts: its checkpoint's config, or the fresh model's size
    (None: a checkpoint that does not say)."""
    model = spec.model
    if model.path is not None:
        try:
            config = json.loads((model.path / "config.json").read_text())
        except (OSError, ValueError):
            return None   # reported by the model checks
        return config.get("max_position_embeddings")
    if model.type == "hybrid":
        from kpop.models.hybrid.presets import config_from_spec

        return config_from_spec(model).max_position_embeddings
    return model.max_position_embeddings


def _context_problems(spec: RunSpec) -> list[Problem]:
    context, budget = model_context(spec), spec.rollout.max_total_tokens
    if context is None or budget <= context:
        return []
    fix = ("raise model.max_position_embeddings" if spec.model.path is None
           else "use a checkpoint with a longer context")
    return [Problem("rollout.max_total_tokens", f"{budget} tokens per episode, but the model accepts {context} (its "
                    f"max_position_embeddings): an episode that grows past it would stop the run; lower "
                    f"rollout.max_total_tokens to at most {context} or {fix}")]


def _size_problems(spec: RunSpec) -> list[Problem]:
    """A fresh hybrid model whose training state cannot fit this machine (a local run only)."""
    if spec.cluster.address is not None or spec.learner.num_gpus > 0:
        return []
    from kpop.models.hybrid.presets import config_from_spec, parameter_count

    params = parameter_count(config_from_spec(spec.model))
    need = params * TRAIN_BYTES_PER_PARAM * spec.learner.num_ranks
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need <= have:
        return []
    return [Problem("model.preset", f"{spec.model.preset!r} has {params / 1e9:.1f} B parameters; training it needs about "
                    f"{need / 2**30:,.0f} GiB ({TRAIN_BYTES_PER_PARAM} bytes per parameter: fp32 weights, gradients "
                    f"and Adam moments) and this machine has {have / 2**30:,.0f} GiB: use preset 'tiny' (with size "
                    f"overrides) or run on a cluster with GPUs (cluster.address, learner.num_gpus)")]


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
    return problems + _anneal_problems(spec)


def _anneal_problems(spec: RunSpec) -> list[Problem]:
    from kpop.envs.registry import validate_options

    entries = {e.name: e for e in spec.envs}
    problems = []
    for name, overrides in spec.sft.anneal.env_options.items():
        path = f"sft.anneal.env_options.{name}"
        if name not in entries:
            problems.append(Problem(path, f"{name!r} is not an environment of this run (envs: {sorted(entries)}); "
                                          "name one of them or remove the entry"))
            continue
        try:
            validate_options(name, {**entries[name].options, **overrides})
        except KeyError:
            continue  # an unregistered environment: reported at envs.<i>.name
        except ValueError as exc:
            problems.append(Problem(path, str(exc)))
    return problems


def _timeout_problems(spec: RunSpec) -> list[Problem]:
    wall, step = spec.sandbox.limits.wall_s, spec.rollout.env_step_timeout_s
    if wall < step:
        return []
    return [Problem("sandbox.limits.wall_s", f"{wall:g} s is not below rollout.env_step_timeout_s ({step:g} s): the "
                    f"environment step that waits for an execution would end the episode before the sandbox "
                    f"reports its timeout; lower it or raise rollout.env_step_timeout_s")]
