"""RunSpec -> runtime configuration (kpop.runtime.config): the one place where a spec becomes the
configuration of engines, environment workers (their environments, agent-loop limits and sandbox),
training and evaluation sampling, reward terms, the Ray start and the metrics sinks.

Environment settings come from the spec's `envs:` entries only (`env_config`), so their defaults
are stated once, in kpop.spec.envs; a worker runs exactly the environments it is given. CPU sharing
on a shared machine (`overlaps`, `rollout_nice`) is decided here too, because it is part of how
engine and worker processes are started.
"""

from __future__ import annotations

import os
from pathlib import Path

from kpop.rollout.agent_loop import LoopLimits
from kpop.rollout.engine import SamplingParams
from kpop.rollout.engine_choice import EngineChoice, ModelFacts, choose_engine, facts_from_checkpoint
from kpop.rollout.env_worker import EnvConfig, WorkerConfig
from kpop.runtime.config import EngineLaunch, MetricsConfig, Placement, RayStart, RunRuntime
from kpop.spec import RunSpec
from kpop.spec.envs import EnvEntrySpec
from kpop.spec.rollout import RolloutSpec


def runtime_config(spec: RunSpec, model_dir: str | Path) -> RunRuntime:
    """Everything a run's processes are built from; `model_dir` holds the starting weights and tokenizer."""
    return RunRuntime(
        engines=tuple(engine_launch(spec, model_dir, i) for i in range(spec.rollout.engine.num_engines)),
        workers=tuple(worker_config(spec, model_dir, i) for i in range(spec.rollout.num_env_workers)),
        sampling=training_sampling(spec),
        greedy=greedy_sampling(spec),
        reward_terms={e.name: tuple(e.rewards) for e in spec.envs},
        ray=ray_start(spec),
        metrics=MetricsConfig(Path(spec.run_dir), spec.logging),
        placement=placement(spec),
    )


# How long a local instance waits for its own actors' processes to start and construct them.
LOCAL_START_TIMEOUT_S = 1800.0


def ray_start(spec: RunSpec) -> RayStart:
    """cluster.start_timeout_s bounds the waits on a cluster at an address, where other jobs may
    hold the resources. A local instance is the run's own and has been checked to hold every actor
    (kpop.runtime.placement.check_fits): there a wait is only processes starting on a loaded
    machine (a minute and more on two busy cores), so it gets LOCAL_START_TIMEOUT_S."""
    c = spec.cluster
    timeout = c.start_timeout_s if c.address else max(c.start_timeout_s, LOCAL_START_TIMEOUT_S)
    return RayStart(c.address, c.num_cpus or max(os.cpu_count() or 2, 4), timeout)


def placement(spec: RunSpec) -> Placement:
    p = spec.cluster.placement
    return Placement(dict(p.learner), dict(p.engine), dict(p.env_worker))


def engine_launch(spec: RunSpec, model_dir: str | Path, index: int) -> EngineLaunch:
    """Engine replica `index`: the chosen engine's config (its own sampling seed, the shared engine
    settings) and placement."""
    eng = spec.rollout.engine
    if engine_choice(spec, model_dir).kind == "builtin":
        from kpop.rollout.builtin_engine import BuiltinEngineConfig  # its module imports torch

        config = BuiltinEngineConfig(model_dir=str(model_dir), max_batch=eng.max_num_seqs, seed=spec.seed + index,
                                     device="cuda" if eng.num_gpus > 0 else "cpu", dtype=eng.dtype)
    else:
        from kpop.rollout.vllm_engine import VLLMEngineConfig  # its module imports torch

        config = VLLMEngineConfig(model_dir=str(model_dir), kv_cache_gib=eng.kv_cache_gib,
                                  enforce_eager=eng.enforce_eager, seed=spec.seed + index,
                                  max_num_seqs=eng.max_num_seqs, dtype=eng.dtype)
    return EngineLaunch(config, eng.num_cpus, eng.num_gpus, rollout_nice(spec), dict(spec.cluster.placement.engine))


def engine_choice(spec: RunSpec, model_dir: str | Path | None = None) -> EngineChoice:
    """The engine a run's engines are: `rollout.engine.type`, or for "auto" the one engine rule
    (kpop.rollout.engine_choice) applied to the model, on GPUs when the engines get GPUs."""
    eng = spec.rollout.engine
    if eng.type != "auto":
        return EngineChoice(eng.type, f"rollout.engine.type is {eng.type}")
    return choose_engine(model_facts(spec, model_dir), gpu=eng.num_gpus > 0)


def model_facts(spec: RunSpec, model_dir: str | Path | None = None) -> ModelFacts:
    """What the engine rule needs to know of the run's model: from the config.json of the folder
    the run starts from (`model_dir`, else `model.path`) when there is one, else from the sizes of
    the fresh model the run will build."""
    for folder in (model_dir, spec.model.path):
        if folder is not None and (Path(folder) / "config.json").is_file():
            return facts_from_checkpoint(folder)
    m = spec.model
    if m.type == "hybrid":
        return ModelFacts("bailing_hybrid", ("BailingMoeV2_5ForCausalLM",), None)
    return ModelFacts("llama", ("LlamaForCausalLM",), m.hidden_size // m.num_heads)


def worker_config(spec: RunSpec, model_dir: str | Path, index: int) -> WorkerConfig:
    """Environment worker `index`: every environment of the run, the loop limits and the sandbox."""
    return WorkerConfig(str(model_dir), tuple(env_config(e) for e in spec.envs), loop_limits(spec.rollout),
                        spec.sandbox, index, rollout_nice(spec))


def env_config(entry: EnvEntrySpec) -> EnvConfig:
    return EnvConfig(entry.name, dict(entry.options), tuple(entry.rewards))


def loop_limits(rollout: RolloutSpec) -> LoopLimits:
    return LoopLimits(rollout.max_turns, rollout.max_total_tokens, rollout.sampling.max_new_tokens,
                      rollout.env_step_timeout_s)


def training_sampling(spec: RunSpec) -> SamplingParams:
    s = spec.rollout.sampling
    return SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_tokens=s.max_new_tokens,
                          seed=spec.seed)


def greedy_sampling(spec: RunSpec) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=spec.rollout.sampling.max_new_tokens)


def overlaps(spec: RunSpec) -> bool:
    """Whether generation keeps running while the learner trains (KPop with eta > 0)."""
    return spec.scheduler.type == "kpop" and spec.scheduler.max_staleness > 0


def rollout_nice(spec: RunSpec) -> int:
    """Niceness of engine and worker processes: `rollout.nice`, else 10 when KPop overlaps
    generation with training on CPU engines. Generation then runs ahead of the learner (the buffer
    holds the next batches already), so the learner step is the critical path and should win the
    shared cores; in a synchronous run the two take turns and nothing changes."""
    if spec.rollout.nice is not None:
        return spec.rollout.nice
    return 10 if overlaps(spec) and spec.rollout.engine.num_gpus == 0 else 0
