"""Synchronous vs KPop scheduling on the same long-tailed agentic workload, side by side.

Workload: the calculator task wrapped so that (a) every environment step waits a long-tailed
latency, as tool calls, test runs and web fetches do (asyncio.sleep, an awaitable: 80% of steps
take 0.05-0.3 s, 20% take 1.5-4 s), and (b) the number of model turns an episode gets before it
ends is long-tailed (most episodes 1 turn, a few up to `max_turns`), so generated tokens per
episode are long-tailed too. Latencies and turn budgets are drawn from the task's seed and the
turn number, so both schedulers face exactly the same workload. One cold start (SFT on solver
episodes) is trained first and saved; both runs start from that checkpoint, with the tiny model,
the real vLLM engine, real environment workers and the real DeepSpeed learner, the same seed and
the same number of trained samples (steps x tasks_per_step x group_size).

Several seeds (`--seeds 3 4 5`) share the one cold start; each seed runs both schedulers.

Prints, per seed and over all seeds: RL wall-clock of each and the ratio (also for steps 2..N,
without the one-off wait for the first batch, which a long run amortises), engine idle fraction
(1 - share of engine polls with requests in flight, kpop.scheduler.monitor), trained samples, and
the reward: the held-out evaluation after RL, greedy (the cold start already solves most of it, so
it mainly shows a collapse) and sampled at the training temperature (what the final policy earns),
and the mean training reward over the run. Both runs train exactly the same tasks (same sampler
seed, every draw trained once), so the run mean compares like with like; the reward of the last
steps would not: KPop trains groups in completion order, and episodes run long when the model
keeps failing, so its last batches hold the slow, failing groups. Means over seeds come with
their standard errors.

    .venv/bin/python benchmarks/async_speedup.py [--steps 32] [--eta 8] [--max-concurrent 24] [--tasks 8]
        [--seeds 3 4 5] [--lr 1e-4] [--kpop-set K=V]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SLOW_ENV = "slow_calculator"


def register_slow_env() -> None:
    """Registers the long-tailed calculator (runs in the driver and in every Ray worker process)."""
    from kpop.envs.contract import Message, StepInfo, StepResult
    from kpop.envs.families.calculator import CalculatorEnv
    from kpop.envs.registry import register_env

    class SlowCalculator(CalculatorEnv):
        Options = CalculatorEnv.Options

        def make_task(self, seed, options):
            self.rng, self.task_seed = random.Random(seed), seed
            # long-tailed turn budget: P(1) = 0.6, P(2) = 0.2, P(3) = 0.1, P(6) = 0.1
            self.target_turns = self.rng.choices([1, 2, 3, 6], weights=[6, 2, 1, 1])[0]
            return super().make_task(seed, options)

        async def astep(self, action):
            latency = random.Random(f"{self.task_seed}/{self.turns}")
            slow = latency.random() < 0.2
            await asyncio.sleep(latency.uniform(1.5, 4.0) if slow else latency.uniform(0.05, 0.3))
            result = await super().astep(action)
            if result.terminated and result.reward == 0.0 and self.turns < self.target_turns:
                return StepResult([Message("user", "Not quite. Try again.")], 0.0, False, False,
                                  StepInfo(result.info.reward_parts, {}))
            return result

    try:
        register_env(SLOW_ENV)(SlowCalculator)
    except ValueError:
        pass  # already registered in this process


ENV_OPTIONS = "{min_operand: 1, max_operand: 9}"


@dataclass(frozen=True)
class Workload:
    steps: int = 32
    eta: int = 8            # with max_concurrent: a tail group gets 8 versions, few episodes contend
    max_concurrent: int = 24  # groups in flight (3 batches); eta alone would admit (eta + v + 1) batches
    tasks: int = 8          # tasks per step, each sampled 4 times
    seed: int = 3
    lr: float = 1e-4        # RL learning rate (at 3e-4 KPop's 3-4-version-old tokens destabilised 2 of 3 seeds)
    sft_steps: int = 200    # the shared cold start
    kpop_set: tuple[str, ...] = ()  # extra spec overrides of the KPop run (scheduler knobs)


def overrides(run_dir: Path, scheduler: str, w: Workload, init: Path | None, env: str = SLOW_ENV) -> list[str]:
    steps = 0 if init is None else w.steps  # without an init this is the cold start: SFT only
    common = ["model.hidden_size=64", "model.intermediate_size=128", "model.num_heads=2", "model.num_kv_heads=1",
              'logging.progress="off"', f"sft.steps={w.sft_steps if init is None else 0}", "sft.target_loss=0", "sft.num_examples=4096",
              "sft.batch_size=32", "train.eval_tasks=64", f"train.steps={steps}", f"train.tasks_per_step={w.tasks}",
              "rollout.group_size=4", "rollout.max_turns=6", "rollout.max_total_tokens=512",
              "rollout.sampling.max_new_tokens=32", "rollout.num_env_workers=2", f"train.checkpoint_every={max(steps, 1)}",
              f"seed={w.seed}", f"run_dir={run_dir}", f"envs=[{{name: {env}, options: {ENV_OPTIONS}}}]", f"learner.lr={w.lr}"]
    if init is not None:
        common += [f"model.path={init}", f"tokenizer.path={init}"]
    if scheduler == "kpop":
        common += ["scheduler.type=kpop", f"scheduler.max_staleness={w.eta}", "scheduler.dpr.enabled=false",
                   f"scheduler.max_concurrent={w.max_concurrent}", *w.kpop_set]
    return common


def _context(spec, run_dir: Path):
    from kpop.bootstrap import prepare_initial_model
    from kpop.launch import start_actors
    from kpop.loop.context import RunContext
    from kpop.metrics import MetricsWriter
    from kpop.tasks import TaskSampler

    run_dir.mkdir(parents=True, exist_ok=True)
    model_dir = prepare_initial_model(spec)
    engines, workers, learner = start_actors(spec, model_dir)
    return RunContext(spec, run_dir, model_dir, engines, workers, learner, TaskSampler(spec.envs, spec.seed),
                      MetricsWriter(run_dir))


def cold_start_once(run_dir: Path, w: Workload) -> Path:
    """SFT the tiny model on solver episodes once; both schedulers start from this checkpoint.
    The plain calculator (same tasks, no added latency) serves the tokenizer corpus and the solver
    episodes, which would otherwise wait out thousands of simulated tool latencies."""
    import ray

    from kpop.launch import checkpoint
    from kpop.loop.sync import cold_start
    from kpop.spec import load_spec

    ctx = _context(load_spec(None, overrides(run_dir, "sync", w, None, env="calculator")), run_dir)
    try:
        cold_start(ctx)
        return checkpoint(ctx, 0)
    finally:
        for handle in [*ctx.engines, *ctx.workers, ctx.learner]:
            ray.kill(handle)


def run_one(run_dir: Path, scheduler: str, w: Workload, init: Path) -> dict:
    import ray

    from kpop.metrics import read_metrics
    from kpop.scheduler.monitor import EngineMonitor
    from kpop.spec import load_spec

    ctx = _context(load_spec(None, overrides(run_dir, scheduler, w, init)), run_dir)
    monitor = EngineMonitor(lambda: ctx.engines).start()
    try:
        result = _train(ctx, scheduler, monitor)
    finally:
        monitor.stop()
        for handle in [*ctx.engines, *ctx.workers, ctx.learner]:
            ray.kill(handle)
    rl = [r for r in read_metrics(run_dir) if r["phase"] == "rl"]
    after, before = result["after_rl"], result["before_rl"]
    # steps 2..N: the one-off pipeline fill (the first batch) left out, as in a long run
    return {"wall_s": result["wall_s"], "steady_s": rl[-1]["time"] - rl[0]["time"],
            "idle": 1.0 - result["util"], "samples": sum(r["episodes"] for r in rl),
            "train_reward": sum(r["reward"] * r["episodes"] for r in rl) / sum(r["episodes"] for r in rl),
            "eval_reward": after["reward"], "eval_before": before["reward"],
            "eval_sampled": after["sampled_reward"], "eval_sampled_before": before["sampled_reward"],
            "eval_tasks": ctx.spec.train.eval_tasks}


def _train(ctx, scheduler: str, monitor) -> dict:
    from kpop.launch import checkpoint
    from kpop.loop import kpop_loop, sync

    # Time only the RL phase: wrap the first RL step's start (after cold start + first evaluation).
    marks = {}
    evaluate = sync.evaluate

    def timed_evaluate(ctx_, step, label):
        if label == "after_rl":
            marks["end"], marks["util"] = time.perf_counter(), monitor.total()
        out = evaluate(ctx_, step, label)
        if label == "before_rl":
            monitor.reset()
            marks["start"] = time.perf_counter()
        return out

    sync.evaluate = kpop_loop.evaluate = timed_evaluate
    try:
        result = (kpop_loop if scheduler == "kpop" else sync).train(ctx, checkpoint)
    finally:
        sync.evaluate = kpop_loop.evaluate = evaluate
    return {**result, "wall_s": marks["end"] - marks["start"], "util": marks["util"]}


def main() -> None:
    import ray

    d = Workload()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--sft-steps", type=int, default=d.sft_steps)
    parser.add_argument("--lr", type=float, default=d.lr, help="RL learning rate of both runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5],
                        help="run seeds (tasks, held-out set, sampling); the first also seeds the shared cold start")
    parser.add_argument("--tasks", type=int, default=d.tasks, help="tasks per step (each sampled 4 times)")
    parser.add_argument("--eta", type=int, default=d.eta)
    parser.add_argument("--max-concurrent", type=int, default=d.max_concurrent, help="KPop groups in flight at most")
    parser.add_argument("--kpop-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra spec override for the KPop run only, e.g. rollout.engine.max_num_seqs=32")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    workloads = [Workload(args.steps, args.eta, args.max_concurrent, args.tasks, seed, args.lr, args.sft_steps,
                          tuple(args.kpop_set)) for seed in args.seeds]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    register_slow_env()
    from kpop.launch import RAY_SYSTEM_CONFIG

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, _system_config=RAY_SYSTEM_CONFIG,
             runtime_env={"worker_process_setup_hook": register_slow_env})
    root = Path(tempfile.mkdtemp(prefix="async_speedup_"))
    init = cold_start_once(root / "cold_start", workloads[0])
    results = []
    for w in workloads:
        pair = {name: run_one(root / f"{name}_seed{w.seed}", name, w, init) for name in ("sync", "kpop")}
        print(f"seed {w.seed}", json.dumps(pair), flush=True)
        results.append(pair)
    report(results, workloads)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    ray.shutdown()


def report(results: list[dict], workloads: list[Workload]) -> None:
    """One row per seed, then means over seeds; rewards with their standard errors."""
    print(f"\n{'seed':>5} {'sync s':>8} {'kpop s':>8} {'ratio':>6} {'2..N':>6} {'idle sync':>10} {'idle kpop':>10} "
          f"{'samples':>8} {'greedy s/k':>12} {'sampled s/k':>12} {'train s/k':>12}")
    for w, r in zip(workloads, results):
        s, k = r["sync"], r["kpop"]
        print(f"{w.seed:>5} {s['wall_s']:8.1f} {k['wall_s']:8.1f} {s['wall_s'] / k['wall_s']:5.2f}x "
              f"{s['steady_s'] / k['steady_s']:5.2f}x {s['idle']:10.2f} {k['idle']:10.2f} "
              f"{s['samples']:4.0f}/{k['samples']:<3.0f} {s['eval_reward']:6.3f}/{k['eval_reward']:.3f} "
              f"{s['eval_sampled']:6.3f}/{k['eval_sampled']:.3f} {s['train_reward']:6.3f}/{k['train_reward']:.3f}")
    total = {name: sum(r[name]["wall_s"] for r in results) for name in ("sync", "kpop")}
    steady = {name: sum(r[name]["steady_s"] for r in results) for name in ("sync", "kpop")}
    w0 = workloads[0]
    knobs = "".join(f", {kv}" for kv in w0.kpop_set)
    print(f"\nKPop eta={w0.eta}, max_concurrent={w0.max_concurrent}{knobs}: "
          f"{total['sync'] / total['kpop']:.2f}x faster over {len(results)} seed(s) "
          f"({total['sync']:.1f} s vs {total['kpop']:.1f} s of RL wall-clock, same trained samples); "
          f"steps 2..N: {steady['sync'] / steady['kpop']:.2f}x ({steady['sync']:.1f} s vs {steady['kpop']:.1f} s)")
    n_eval = results[0]["sync"]["eval_tasks"]
    for label, key, before, n in [("held-out greedy", "eval_reward", "eval_before", n_eval),
                                  ("held-out sampled", "eval_sampled", "eval_sampled_before", n_eval),
                                  ("training (run mean)", "train_reward", None, results[0]["sync"]["samples"])]:
        line = []
        for name in ("sync", "kpop"):
            m, se = mean_se([r[name][key] for r in results], n)
            start = f"{sum(r[name][before] for r in results) / len(results):.3f} -> " if before else ""
            line.append(f"{name} {start}{m:.3f} ± {se:.3f}")
        print(f"{label:>20} reward: " + "; ".join(line))


def mean_se(values: list[float], n: int) -> tuple[float, float]:
    """Mean over seeds and its standard error: the spread between seeds plus each seed's
    binomial error (a rate measured on n samples)."""
    m = sum(values) / len(values)
    binom = sum(v * (1 - v) / n for v in values) / len(values) ** 2
    spread = sum((v - m) ** 2 for v in values) / max(len(values) - 1, 1) / len(values)
    return m, (binom + spread) ** 0.5


if __name__ == "__main__":
    main()
