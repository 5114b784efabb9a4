"""The KPop loop, top to bottom (asynchronous RL; eta = 0 is exactly the synchronous loop).

    resume       if the run directory has a checkpoint: restore the scheduler state from it
                 (buffer, pending groups, sampler position, curriculum); else cold start + evaluate
    each step    batch = groups meeting the budget (Phi tokens or B groups), none older than eta;
                 no group is drawn past the run's last step (the draw horizon)
                 group-level reward terms on the complete groups (kpop.loop.group_rewards)
                 train on it (rollouts keep running meanwhile: overlap)
                 publish weights (engines pause "keep": in-flight rollouts resume under v + 1)
                 ledger + metrics
    rounds       after the steps the spec schedules them (kpop.stages.schedule): nothing is drawn
                 past such a step, the running groups finish, the rounds run as in the synchronous
                 loop, and groups still held re-run under the new policy (Collector.after_round)
    checkpoint   every N steps, with the scheduler state
    evaluate     held-out pass rate after RL; final checkpoint

The ledger `<run_dir>/ledger.jsonl` has one line per trained step: {"step", "indices",
"group_ids"} (sampler draw indices trained). A resumed run first drops lines past its checkpoint,
so over any sequence of kills and resumes each index appears at most once, and every index below
the sampler position is trained, buffered or pending.

Failures: environment workers and engines that die are replaced and their episodes retried or
resumed (kpop.scheduler.dispatcher, kpop.rollout.env_worker). The learner dying stops the run
with the last checkpoint intact; a learner step that raises (actor alive) saves a checkpoint with
the batch put back into the buffer, then stops.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from kpop.loop.context import RunContext
from kpop.loop.group_rewards import shape_groups
from kpop.loop.record import StepTimes, rl_record
from kpop.loop.resume import find_checkpoint, load_state, previous_eval, truncate_ledger
from kpop.loop.sync import cold_start, evaluate, evaluate_start
from kpop.progress import Progress
from kpop.runtime.actors import on_driver_node, start_engine, start_worker
from kpop.scheduler import stats
from kpop.scheduler.collector import Collector
from kpop.scheduler.dpr import DynamicPassRating
from kpop.scheduler.monitor import EngineMonitor
from kpop.scheduler.router import EngineRouter
from kpop.scheduler.state import STATE_FILE, SchedulerState
from kpop.stages.rounds import run_rounds
from kpop.stages.schedule import rounds_after, segment_end


class LearnerFailed(RuntimeError):
    """The learner died or raised; the run stopped with its last checkpoint intact."""


class LearnerStepFailed(LearnerFailed):
    """The learner raised but is alive: a checkpoint with the untrained batch is saved first."""


def train(ctx: RunContext, checkpoint) -> dict:
    return asyncio.run(_train(ctx, checkpoint))


async def _train(ctx: RunContext, checkpoint) -> dict:
    resume = find_checkpoint(ctx.run_dir)
    state = load_state(resume) if resume else None
    if state is None:
        annealed_after_target = await asyncio.to_thread(cold_start, ctx)
        before = await asyncio.to_thread(evaluate_start, ctx, annealed_after_target)
    else:
        before = previous_eval(ctx.run_dir, "before_rl")
        truncate_ledger(ctx.run_dir, state.step)
    collector = await _collector(ctx, state)
    monitor = EngineMonitor(lambda: ctx.engines).start()
    total, step = ctx.spec.train.steps, state.step if state else 0
    progress = Progress(total, ctx.spec.logging.progress, label="rl")
    t0 = time.perf_counter()
    rounds: list[dict] = []
    try:
        while step < total:
            rec = await _step(ctx, collector, monitor, step + 1)
            step = rec["step"]
            progress.update(step, {"reward": rec["reward"], "tok/s": rec["tokens_per_s"], "step_s": rec["step_s"]})
            rounds += await _rounds(ctx, collector, step)
            if ctx.spec.train.eval_every and step % ctx.spec.train.eval_every == 0 and step < total:
                await asyncio.to_thread(evaluate, ctx, step, "during_rl")
            if step % ctx.spec.train.checkpoint_every == 0 or step == total:
                await _checkpoint(ctx, collector, checkpoint, step)
    except LearnerStepFailed:
        await _checkpoint(ctx, collector, checkpoint, step)
        raise
    finally:
        await collector.close()
        monitor.stop()
        progress.close()
    rl = {"wall_s": time.perf_counter() - t0, "engine_util": monitor.total(), "steps": step}
    after = await asyncio.to_thread(evaluate, ctx, total, "after_rl")
    if total == 0:
        await _checkpoint(ctx, collector, checkpoint, 0)
    return {"before_rl": before, "after_rl": after, "rl": rl, **({"rounds": rounds} if rounds else {})}


async def _rounds(ctx: RunContext, collector: Collector, step: int) -> list[dict]:
    due = rounds_after(ctx.spec, step)
    if not due:
        return []
    await collector.drain()
    out = await asyncio.to_thread(run_rounds, ctx, due, evaluate)
    # One more publish through the collector: it keeps the update a replacement engine loads.
    collector.after_round(await collector.publish(ctx.learner), segment_end(ctx.spec, step) - step)
    return out


async def _collector(ctx: RunContext, state: SchedulerState | None) -> Collector:
    spec, runtime = ctx.spec.scheduler, ctx.runtime
    await asyncio.to_thread(ctx.wait_engines)
    dpr = DynamicPassRating(spec.dpr) if spec.dpr.enabled else None
    ctx.sampler.curriculum, ctx.sampler.revisit_prob = dpr, spec.dpr.revisit_prob if dpr else 0.0
    router = EngineRouter.options(**on_driver_node()).remote(ctx.engines)
    dispatcher_args = {"workers": ctx.workers, "router": router, "sampling": runtime.sampling,
                       "make_worker": lambda i: start_worker(runtime.workers[i], runtime.placement.env_worker),
                       "max_retries": spec.max_retries}
    collector = Collector(spec, ctx.sampler, dpr, ctx.spec.rollout.group_size, ctx.spec.train.tasks_per_step,
                          ctx.engines, router, lambda i: start_engine(runtime.engines[i]), dispatcher_args)
    if state is not None and hasattr(ctx.learner, "load"):
        await ctx.learner.load.remote(str(find_checkpoint(ctx.run_dir)))
    # One publish up front: engines label tokens with the learner's numbering whatever they were
    # built from, and a replacement engine always has a full update to load.
    version = await collector.publish(ctx.learner)
    done = state.step if state else 0
    collector.resume(state, version, segment_end(ctx.spec, done) - done)
    return collector


async def _step(ctx: RunContext, collector: Collector, monitor: EngineMonitor, step: int) -> dict:
    from ray.exceptions import RayActorError

    t0 = time.perf_counter()
    groups = await collector.next_batch()
    t_gen = time.perf_counter() - t0
    version = collector.staleness.version
    trajs = shape_groups([t for g in groups for t in g.ordered()], ctx.runtime.reward_terms)
    in_flight = collector.dispatcher.in_flight
    try:
        m = await ctx.learner.train_step.remote(trajs, "rl")
    except RayActorError as exc:
        raise LearnerFailed(f"learner died at RL step {step}; resume from the last checkpoint") from exc
    except Exception as exc:
        collector.buffer.ready[:0] = groups  # the batch was not trained: back into the buffer
        raise LearnerStepFailed(f"learner step {step} failed; batch returned to the buffer") from exc
    paused = collector.dispatcher.in_flight
    learner_version = await collector.publish(ctx.learner)
    collector.on_version(version + 1)
    _ledger(ctx.run_dir, step, groups)
    times = StepTimes(time.perf_counter() - t0, t_gen, m.step_s)
    router = await collector.router.stats.remote()
    return ctx.metrics.write("rl", step, {
        **rl_record(trajs, m, learner_version, times, policy_version=version + collector.base),
        "rl_version": version + 1, "groups": len(groups),
        "buffer_size": len(collector.buffer), "in_flight": in_flight, "paused": paused,
        "resumed": stats.resumed_count(groups), "engine_util": monitor.window(),
        "migrated": router["migrated"], "moved": router["moved"],
        **collector.snapshot(step).counters, **(ctx.sampler.curriculum.stats() if ctx.sampler.curriculum else {}),
    })


def _ledger(run_dir: Path, step: int, groups) -> None:
    line = {"step": step, "indices": [g.index for g in groups], "group_ids": [g.group_id for g in groups]}
    with (run_dir / "ledger.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")


async def _checkpoint(ctx: RunContext, collector: Collector, checkpoint, step: int) -> None:
    # Saving runs in a thread while rollouts continue.
    state = await collector.checkpoint_state(step)
    await asyncio.to_thread(checkpoint, ctx, step, {STATE_FILE: state.model_dump_json()})
