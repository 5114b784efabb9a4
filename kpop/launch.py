"""Launch a run: resolve the spec, start Ray and the actors, run the loop, shut everything down.

Engines, environment workers (with their sandbox) and the metrics sinks are built from the run's
runtime configuration (kpop.runtime), the one conversion of a RunSpec that `kpop eval` and
`kpop serve` use too. Placement is the only thing that differs between a laptop and a cluster:
with `cluster.address` unset a local Ray instance is started; otherwise the same actors are placed
on the cluster. The loops are handed `checkpoint` and import nothing from here.

Start-up on a cluster fails fast (kpop.runtime.placement, kpop.runtime.storage), each step bounded
by cluster.start_timeout_s: an address where nothing answers, a spec the cluster's nodes cannot
hold, a run_dir some node does not share, actors still unplaced after the timeout. Only building
engines and loading weights may take longer (STARTUP_TIMEOUT_S).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from kpop.faults import fault_point
from kpop.loop.context import RunContext
from kpop.metrics import MetricsWriter, truncate_metrics
from kpop.runtime.actors import start_engine, start_worker
from kpop.runtime.build import overlaps, ray_start, runtime_config
from kpop.runtime.config import RayStart, RunRuntime
from kpop.runtime.placement import ClusterStartError, alive_nodes, check_fits, check_reachable, run_demands, wait_placed
from kpop.runtime.quant_plan import record as record_quant
from kpop.spec import RunSpec
from kpop.spec.sandbox import SandboxSpec
from kpop.tasks import TaskSampler

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 1800.0


def plan(spec: RunSpec) -> str:
    """A human-readable summary of what `run` would start."""
    r, lr, t = spec.rollout, spec.learner, spec.train
    envs = ", ".join(f"{e.name} (weight {e.weight:g}{_terms(e.rewards)})" for e in spec.envs)
    model = f"{spec.model.type} from {spec.model.path}" if spec.model.path else f"fresh {spec.model.type}"
    return "\n".join([
        f"run {spec.name!r} -> {spec.run_dir}",
        f"  model:     {model}",
        f"  envs:      {envs}",
        f"  engines:   {r.engine.num_engines} x {_engine(spec)}",
        f"  workers:   {r.num_env_workers} environment worker(s)",
        f"  sandbox:   {describe_sandbox(spec.sandbox)}",
        f"  learner:   {lr.num_ranks} DeepSpeed rank(s), ZeRO-{lr.zero_stage}, {lr.precision}, objective {lr.objective.type}",
        *_quant(spec),
        (f"  schedule:  {spec.scheduler.type}; cold start {_cold_start(spec)}; {t.steps} RL steps x "
         f"{t.tasks_per_step} tasks x {r.group_size} samples; {t.eval_tasks} held-out tasks"),
        *_rounds(spec),
        f"  cluster:   {spec.cluster.address or 'local Ray instance'}",
    ])


def _rounds(spec: RunSpec) -> list[str]:
    from kpop.stages.schedule import describe

    return [f"  {'rounds:' if i == 0 else '':<11}{line}" for i, line in enumerate(describe(spec))]


def _quant(spec: RunSpec) -> list[str]:
    from kpop.runtime.quant_plan import plan_lines

    return [f"  {'quant:' if i == 0 else '':<11}{line}" for i, line in enumerate(plan_lines(spec))]


def _engine(spec: RunSpec) -> str:
    from kpop.runtime.build import engine_choice

    choice = engine_choice(spec, spec.model.path)
    kind = f"{choice.kind} in {spec.rollout.engine.dtype}"
    return kind if spec.rollout.engine.type != "auto" else f"{kind} (auto: {choice.reason})"


def _terms(rewards: list) -> str:
    return f", rewards {' + '.join(term.type for term in rewards)}" if rewards else ""


def describe_sandbox(sandbox: SandboxSpec) -> str:
    """The sandbox every environment worker is given (kpop.runtime.build.worker_config), with its
    limits as the pool applies them (kpop.envs.sandbox.factory), as one line of the plan."""
    from kpop.envs.sandbox.factory import limits_from_spec

    b, lim, mib = sandbox.backend, limits_from_spec(sandbox.limits), 2**20
    if b.type == "bwrap":
        binds = f", {len(b.ro_binds)} extra read-only binds" if b.ro_binds else ""
        warm = ", warm: one running sandbox per slot, reset after each execution" if b.warm else ", fresh namespaces each"
        backend = f"bwrap ({b.python}{', cgroups' if b.use_cgroups else ''}{binds}{warm})"
    elif b.type == "docker":
        warm = ", warm: one running container per slot, reset after each execution" if b.warm else ", a fresh container each"
        backend = f"docker (image {b.image}, {b.python}{', engine ' + b.base_url if b.base_url else ''}{warm})"
    else:
        backend = "process (NO isolation)"
    return (f"{backend}, {sandbox.pool_size} at once per worker; each execution: wall {lim.wall_s:g} s, "
            f"cpu {lim.cpu_s:g} s, memory {lim.memory_bytes // mib} MiB, {lim.max_processes} processes, "
            f"files {lim.max_file_bytes // mib} MiB, output {lim.max_output_bytes // 1024} KiB per stream, "
            f"returned files {lim.max_output_files_bytes // mib} MiB")


def _cold_start(spec: RunSpec) -> str:
    from kpop.loop.start_check import TARGET_WINDOW

    cfg = spec.sft
    if cfg.steps == 0:
        return "none"
    if cfg.target_loss == 0:
        first = f"{cfg.steps} SFT steps"
    else:
        first = f"up to {cfg.steps} SFT steps (until the {TARGET_WINDOW}-step mean loss is <= {cfg.target_loss:g})"
    if not cfg.anneal.steps:
        return first
    mix = ", ".join(f"{name} {opts}" for name, opts in cfg.anneal.env_options.items()) or "the same options"
    lr = f" at lr {cfg.anneal.lr:g}" if cfg.anneal.lr is not None else ""
    return f"{first}, then {cfg.anneal.steps} annealing SFT steps{lr} on solver episodes with {mix}"


# Ray's default worker niceness (15) would put the learner on a par with the generation processes
# it must win the cores from; these start at 0 and yield by themselves (kpop.rollout.niceness).
RAY_SYSTEM_CONFIG = {"worker_niceness": 0}


def _start_ray(start: RayStart) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return
    if start.address:
        check_reachable(start.address, start.timeout_s)  # Ray itself retries for minutes
        ray.init(address=start.address, log_to_driver=False)
    else:
        ray.init(num_cpus=start.num_cpus, include_dashboard=False, log_to_driver=False,
                 _system_config=RAY_SYSTEM_CONFIG)


def _join(spec: RunSpec) -> None:
    """Start or join Ray and check that its nodes can hold the run's actors (ClusterStartError)."""
    start = ray_start(spec)
    _start_ray(start)
    where = f"the cluster at {start.address}" if start.address else "the local Ray instance"
    p = spec.cluster.placement
    check_fits(run_demands(spec), alive_nodes(), {"learner": p.learner, "engine": p.engine, "env_worker": p.env_worker}, where)


def start_actors(spec: RunSpec, model_dir: Path):
    """Engines, environment workers and the learner, all ready."""
    import ray

    engines, workers, learner, starting = launch_actors(spec, model_dir, runtime_config(spec, model_dir))
    startup = ray.get(starting, timeout=STARTUP_TIMEOUT_S)
    log.info("actors ready: engine start-up %s s", ", ".join(f"{t:.1f}" for t in startup))
    return engines, workers, learner


def launch_actors(spec: RunSpec, model_dir: Path, runtime: RunRuntime):
    """Like `start_actors`, but returns once the learner and workers are ready, with the engines'
    start() refs still running (the cold start needs no engine and overlaps their start-up).
    Engines and workers must be running, and the learner ranks placed, within
    cluster.start_timeout_s (ClusterStartError otherwise)."""
    import ray
    from ray.exceptions import RayActorError

    from kpop.learner.group import LearnerGroup

    timeout, demand = runtime.ray.timeout_s, {d.role: d for d in run_demands(spec)}
    engines = [start_engine(launch) for launch in runtime.engines]
    placed = [e.load.remote() for e in engines]   # answers before the build that start() begins
    starting = [e.start.remote() for e in engines]
    workers = [start_worker(config, runtime.placement.env_worker) for config in runtime.workers]
    learner = LearnerGroup.create(  # coordinator actor over learner.num_ranks DeepSpeed ranks
        str(model_dir), spec.learner, spec.seed, sft_lr=spec.sft.lr, num_threads=learner_threads(spec),
        rl_threads=learner_threads(spec, overlapped=overlaps(spec)), labels=runtime.placement.learner,
        place_timeout_s=timeout)
    try:
        wait_placed({"engine": (demand["engine"], placed),
                     "environment worker": (demand["environment worker"], [w.ping.remote() for w in workers])}, timeout)
        ray.get(learner.ready.remote(), timeout=STARTUP_TIMEOUT_S)
    except (ClusterStartError, RayActorError) as exc:
        for handle in [*engines, *workers, learner]:
            ray.kill(handle)
        if isinstance(exc, ClusterStartError):
            raise
        raise ClusterStartError(f"the learner did not start: {exc}") from exc
    return engines, workers, learner, starting


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


def checkpoint(ctx: RunContext, step: int, extra: dict[str, str] | None = None) -> Path:
    """Save the learner and run state as one checkpoint folder, atomically.

    Everything (learner, `run_state.json`, the `extra` files such as the scheduler state) is written
    into `step_N.partial`, which is renamed to `step_N` once complete; a previous `step_N` (the same
    step saved again) moves aside to `step_N.old` for the instant of that swap and is removed after
    `last` is re-pointed (atomically). So a SIGKILL at any point leaves the previous checkpoint the
    one a resume finds (kpop.loop.resume.find_checkpoint never takes a `.partial` folder).
    `run_state.json` records the size metrics.jsonl had, so a resume drops the records written after
    this checkpoint (`truncate_metrics`) and every step keeps exactly one."""
    import ray

    folder = ctx.run_dir / "checkpoints" / f"step_{step:06d}"
    partial, old = folder.with_name(folder.name + ".partial"), folder.with_name(folder.name + ".old")
    for stale in (partial, old):
        if stale.exists():
            shutil.rmtree(stale)
    ray.get(ctx.learner.save.remote(str(partial)))
    fault_point(ctx.run_dir, f"{folder.name}:learner_saved")
    metrics_bytes = ctx.metrics.path.stat().st_size if ctx.metrics.path.is_file() else 0
    (partial / "run_state.json").write_text(json.dumps({"step": step, "sampler_position": ctx.sampler.position,
                                                        "metrics_bytes": metrics_bytes}))
    for name, text in (extra or {}).items():
        (partial / name).write_text(text)
    fault_point(ctx.run_dir, f"{folder.name}:files_written")
    if folder.exists():
        os.rename(folder, old)
        fault_point(ctx.run_dir, f"{folder.name}:set_aside")
    os.rename(partial, folder)
    fault_point(ctx.run_dir, f"{folder.name}:renamed")
    last = ctx.run_dir / "checkpoints" / "last"
    if last.exists() and not last.is_symlink():
        shutil.rmtree(last)
    tmp = last.with_name("last.tmp")
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(folder.name)
    os.replace(tmp, last)
    fault_point(ctx.run_dir, f"{folder.name}:linked")
    if old.exists():
        shutil.rmtree(old)
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
    # records written after that checkpoint were lost with the process: the run writes them again
    truncate_metrics(run_dir, json.loads((resume / RUN_STATE).read_text()).get("metrics_bytes") if resume else 0)
    _join(spec)   # before building the model: a cluster that cannot run the spec fails in seconds
    model_dir = resume or prepare_initial_model(spec)
    record_quant(spec, model_dir, run_dir)  # the FP4 recipe resolved against the model: <run_dir>/quant.json
    if spec.cluster.address:
        from kpop.runtime.storage import check_storage

        check_storage(run_dir, model_dir, alive_nodes(), spec.cluster.start_timeout_s)
    runtime = runtime_config(spec, model_dir)
    engines, workers, learner, starting = launch_actors(spec, model_dir, runtime)
    metrics = MetricsWriter(runtime.metrics.run_dir, runtime.metrics.logging, spec.model_dump(mode="json"))
    ctx = RunContext(spec, run_dir, model_dir, engines, workers, learner, TaskSampler(spec.envs, spec.seed), metrics,
                     engine_start=starting)
    try:
        result = train(ctx, checkpoint)
    finally:
        for handle in [*engines, *workers, learner]:
            ray.kill(handle)
    (run_dir / "summary.json").write_text(json.dumps(result, indent=2))
    return result
