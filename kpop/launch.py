"""Launch a run: resolve the spec, start Ray and the actors, run the loop, shut everything down.

Placement is the only thing that differs between a laptop and a cluster: with `cluster.address`
unset a local Ray instance is started; otherwise the same actors are placed on the cluster.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from kpop.loop.context import RunContext
from kpop.metrics import MetricsWriter
from kpop.spec import RunSpec
from kpop.tasks import TaskSampler

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 1800.0


def plan(spec: RunSpec) -> str:
    """A human-readable summary of what `run` would start."""
    r, lr, t = spec.rollout, spec.learner, spec.train
    envs = ", ".join(f"{e.name} (weight {e.weight:g})" for e in spec.envs)
    model = f"{spec.model.type} from {spec.model.path}" if spec.model.path else f"fresh {spec.model.type}"
    return "\n".join([
        f"run {spec.name!r} -> {spec.run_dir}",
        f"  model:     {model}",
        f"  envs:      {envs}",
        f"  engines:   {r.engine.num_engines} x {r.engine.type}",
        f"  workers:   {r.num_env_workers} environment worker(s)",
        f"  learner:   {lr.num_ranks} DeepSpeed rank(s), ZeRO-{lr.zero_stage}, {lr.precision}, objective {lr.objective.type}",
        (f"  schedule:  {spec.scheduler.type}; cold start {_cold_start(spec)}; {t.steps} RL steps x "
         f"{t.tasks_per_step} tasks x {r.group_size} samples; {t.eval_tasks} held-out tasks"),
        f"  cluster:   {spec.cluster.address or 'local Ray instance'}",
    ])


def _cold_start(spec: RunSpec) -> str:
    from kpop.loop.start_check import TARGET_WINDOW

    cfg = spec.sft
    if cfg.steps == 0 or cfg.target_loss == 0:
        return f"{cfg.steps} SFT steps"
    return f"up to {cfg.steps} SFT steps (until the {TARGET_WINDOW}-step mean loss is <= {cfg.target_loss:g})"


# Ray's default worker niceness (15) would put the learner on a par with the generation processes
# it must win the cores from; these start at 0 and yield by themselves (kpop.rollout.niceness).
RAY_SYSTEM_CONFIG = {"worker_niceness": 0}


def _start_ray(spec: RunSpec) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return
    if spec.cluster.address:
        ray.init(address=spec.cluster.address, log_to_driver=False)
    else:
        ray.init(num_cpus=spec.cluster.num_cpus or max(os.cpu_count() or 2, 4),
                 include_dashboard=False, log_to_driver=False, _system_config=RAY_SYSTEM_CONFIG)


def make_engine(spec: RunSpec, model_dir: Path, i: int):
    """Engine replica `i` (also used by the KPop scheduler to replace a dead one)."""
    from kpop.rollout.engine_actor import EngineActor
    from kpop.rollout.vllm_engine import VLLMEngineConfig

    eng = spec.rollout.engine
    return EngineActor.options(num_cpus=eng.num_cpus, num_gpus=eng.num_gpus).remote(
        VLLMEngineConfig(model_dir=str(model_dir), kv_cache_gib=eng.kv_cache_gib, enforce_eager=eng.enforce_eager,
                         seed=spec.seed + i, max_num_seqs=eng.max_num_seqs), nice=rollout_nice(spec))


def make_worker(spec: RunSpec, model_dir: Path, i: int):
    """Environment worker `i` (also used by the KPop scheduler to replace a dead one)."""
    import ray

    from kpop.rollout.agent_loop import LoopLimits
    from kpop.rollout.env_worker import EnvConfig, EnvWorker

    limits = LoopLimits(spec.rollout.max_turns, spec.rollout.max_total_tokens,
                        spec.rollout.sampling.max_new_tokens, spec.rollout.env_step_timeout_s)
    env_cfg = [EnvConfig(e.name, dict(e.options), tuple(e.rewards)) for e in spec.envs]
    return ray.remote(EnvWorker).options(num_cpus=0).remote(str(model_dir), env_cfg, limits, i, rollout_nice(spec))


def start_actors(spec: RunSpec, model_dir: Path):
    """Engines, environment workers and the learner, all ready."""
    import ray

    engines, workers, learner, starting = launch_actors(spec, model_dir)
    startup = ray.get(starting, timeout=STARTUP_TIMEOUT_S)
    log.info("actors ready: engine start-up %s s", ", ".join(f"{t:.1f}" for t in startup))
    return engines, workers, learner


def launch_actors(spec: RunSpec, model_dir: Path):
    """Like `start_actors`, but returns once the learner and workers are ready, with the engines'
    start() refs still running (the cold start needs no engine and overlaps their start-up)."""
    import ray

    from kpop.learner.group import LearnerGroup

    engines = [make_engine(spec, model_dir, i) for i in range(spec.rollout.engine.num_engines)]
    starting = [e.start.remote() for e in engines]
    workers = [make_worker(spec, model_dir, i) for i in range(spec.rollout.num_env_workers)]
    learner = LearnerGroup.create(  # coordinator actor over learner.num_ranks DeepSpeed ranks
        str(model_dir), spec.learner, spec.seed, sft_lr=spec.sft.lr, num_threads=learner_threads(spec),
        rl_threads=learner_threads(spec, overlapped=overlaps(spec)))
    ray.get([learner.ready.remote()] + [w.ping.remote() for w in workers], timeout=STARTUP_TIMEOUT_S)
    return engines, workers, learner, starting


def overlaps(spec: RunSpec) -> bool:
    """Whether generation keeps running while the learner trains (KPop with eta > 0)."""
    return spec.scheduler.type == "kpop" and spec.scheduler.max_staleness > 0


def learner_threads(spec: RunSpec, cores: int | None = None, overlapped: bool = False) -> int:
    """Torch threads per learner rank: `learner.threads`, else the machine's cores / ranks. For RL
    steps that overlap generation (`overlapped`) the engines keep generating while the learner
    trains, so the cores reserved for them are not the learner's to take (on a small CPU machine,
    threads fighting the engine slowed the learner step 3x); the cold start and other modes,
    which overlap nothing, keep every core."""
    lr = spec.learner
    if lr.threads:
        return lr.threads
    cores = cores or os.cpu_count() or 1
    if overlapped:
        eng = spec.rollout.engine
        cores -= int(eng.num_cpus * eng.num_engines)
    return max(1, cores // lr.num_ranks)


def rollout_nice(spec: RunSpec) -> int:
    """Niceness of engine and worker processes: `rollout.nice`, else 10 when KPop overlaps
    generation with training on CPU engines. Generation then runs ahead of the learner (the buffer
    holds the next batches already), so the learner step is the critical path and should win the
    shared cores; in a synchronous run the two take turns and nothing changes."""
    if spec.rollout.nice is not None:
        return spec.rollout.nice
    return 10 if overlaps(spec) and spec.rollout.engine.num_gpus == 0 else 0


def checkpoint(ctx: RunContext, step: int, extra: dict[str, str] | None = None) -> Path:
    """Save the learner and run state; `extra` files (e.g. the scheduler state) are written into
    the folder before `last` moves to it, and `last` is replaced atomically."""
    import ray

    folder = ctx.run_dir / "checkpoints" / f"step_{step:06d}"
    ray.get(ctx.learner.save.remote(str(folder)))
    (folder / "run_state.json").write_text(json.dumps({"step": step, "sampler_position": ctx.sampler.position}))
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)
    last = ctx.run_dir / "checkpoints" / "last"
    if last.exists() and not last.is_symlink():
        shutil.rmtree(last)
    tmp = last.with_name("last.tmp")
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(folder.name)
    os.replace(tmp, last)
    return folder


def run(spec: RunSpec) -> dict:
    import ray

    from kpop.bootstrap import prepare_initial_model
    from kpop.loop.resume import RUN_STATE, find_checkpoint
    from kpop.scheduler.state import STATE_FILE

    run_dir = Path(spec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(spec.model_dump_json(indent=2))
    if spec.scheduler.type == "kpop":
        from kpop.loop.kpop_loop import train
    else:
        from kpop.loop.sync import train
    # A run directory with a checkpoint resumes from it: actors start from its weights.
    resume = find_checkpoint(run_dir, STATE_FILE if spec.scheduler.type == "kpop" else RUN_STATE)
    model_dir = resume or prepare_initial_model(spec)
    _start_ray(spec)
    engines, workers, learner, starting = launch_actors(spec, model_dir)
    ctx = RunContext(spec, run_dir, model_dir, engines, workers, learner,
                     TaskSampler(spec.envs, spec.seed), MetricsWriter(run_dir, spec.logging, spec.model_dump(mode="json")),
                     engine_start=starting)
    try:
        result = train(ctx, checkpoint)
    finally:
        for handle in [*engines, *workers, learner]:
            ray.kill(handle)
    (run_dir / "summary.json").write_text(json.dumps(result, indent=2))
    return result
