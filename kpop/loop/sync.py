"""The synchronous RL loop, top to bottom (η = 0: every token is sampled by the current policy).

    resume       if the run directory has a checkpoint: learner state, weights and sampler
                 position from it (the RL steps after it run again on the same tasks); else:
    cold start   SFT on reference-solver episodes that verified correct, until the mean loss of
                 its last steps reaches sft.target_loss (at most sft.steps steps); then, if
                 sft.anneal.steps, that many steps on episodes solved with its option overrides
    evaluate     greedy pass rate on held-out tasks (before RL); a warning when it is too low
                 for RL to improve (kpop.loop.start_check)
    each step    sample tasks × G → rollouts → group-level reward terms (kpop.loop.group_rewards)
                 → learner step → push weights → log; the rounds scheduled after this step
                 (distillation, preference: kpop.stages, each evaluated before and after) → checkpoint
    evaluate     held-out pass rate after RL; final checkpoint
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import ray

from kpop.loop.context import RunContext
from kpop.loop.group_rewards import shape_groups
from kpop.loop.record import StepTimes, rl_record
from kpop.loop.resume import RUN_STATE, find_checkpoint, previous_eval
from kpop.loop.start_check import TARGET_WINDOW, reached_target, start_warning
from kpop.progress import Progress
from kpop.stages.rounds import run_rounds
from kpop.stages.schedule import rounds_after
from kpop.tasks import SamplerState, TaskSampler

log = logging.getLogger(__name__)


def cold_start(ctx: RunContext) -> bool:
    """Runs the cold start; returns whether its annealing phase followed a first phase that
    reached its target loss (kpop.loop.start_check)."""
    cfg = ctx.spec.sft
    if cfg.steps == 0:
        return False
    episodes = [ep for group in ctx.sampler.next_groups(cfg.num_examples, 1) for ep in group]
    losses = _sft_phase(ctx, ctx.solve(episodes), range(1, cfg.steps + 1), "sft", cfg.target_loss,
                        random.Random(ctx.spec.seed))
    anneal = cfg.anneal
    if anneal.steps:
        # Its own task stream: the RL tasks are the same with and without the phase.
        stream = TaskSampler(ctx.spec.envs, ctx.spec.seed, stream="anneal")
        count = min(cfg.num_examples, anneal.steps * cfg.batch_size)   # what its steps can use
        episodes = [ep for group in stream.next_groups(count, 1) for ep in group]
        log.info("cold start: %d annealing steps on solver episodes with options %s", anneal.steps, anneal.env_options)
        first = len(losses) + 1
        if anneal.lr is not None:
            ray.get(ctx.learner.set_sft_lr.remote(anneal.lr))
        _sft_phase(ctx, ctx.solve(episodes, anneal.env_options), range(first, first + anneal.steps), "anneal", 0.0,
                   random.Random(f"{ctx.spec.seed}:anneal"))
        ray.get(ctx.learner.set_sft_lr.remote(cfg.lr))
    ctx.publish_weights()
    return bool(anneal.steps) and reached_target(losses, cfg.target_loss)


def _sft_phase(ctx: RunContext, solved: list, steps: range, label: str, target_loss: float,
               rng: random.Random) -> list[float]:
    """SFT steps on the verified episodes of `solved` until `steps` ends or the target loss is
    reached; returns the step losses. Records are phase "sft", numbered on from the phase before."""
    verified = [t for t in solved if t.reward >= 0.99]
    if not verified:
        raise RuntimeError(f"no reference-solver episode verified correct; cannot build {label} data")
    progress = Progress(len(steps), ctx.spec.logging.progress, label=label)
    losses: list[float] = []
    for i, step in enumerate(steps, 1):
        batch = rng.sample(verified, min(ctx.spec.sft.batch_size, len(verified)))
        m = ray.get(ctx.learner.train_step.remote(batch, "sft"))
        ctx.metrics.write("sft", step, {"loss": m.loss, "grad_norm": m.grad_norm, "tokens": m.tokens,
                                        "verified": len(verified), "solved": len(solved), **m.moe_load, **m.mtp,
                                        **m.quant, **m.loss_by_env()})
        progress.update(i, {"loss": m.loss})
        losses.append(m.loss)
        if reached_target(losses, target_loss):
            log.info("cold start reached its target loss %g at step %d (mean of the last %d steps %.4f)",
                     target_loss, step, TARGET_WINDOW, sum(losses[-TARGET_WINDOW:]) / TARGET_WINDOW)
            break
    progress.close()
    return losses


def evaluate(ctx: RunContext, step: int, label: str) -> dict[str, float]:
    result = ctx.evaluate(ctx.sampler.held_out(ctx.spec.train.eval_tasks))
    ctx.metrics.write("eval", step, {"label": label, **result})
    return result


def evaluate_start(ctx: RunContext, annealed_after_target: bool = False) -> dict[str, float]:
    """Held-out evaluation of the policy RL starts from, logged, with a warning when it is too weak
    for RL to improve (kpop.loop.start_check)."""
    result = evaluate(ctx, 0, "before_rl")
    log.info("RL starts from held-out reward greedy %.3f, sampled %.3f (%d tasks)",
             result["reward"], result["sampled_reward"], int(result["episodes"]))
    floor = ctx.spec.train.min_start_reward
    warning = start_warning(result["reward"], result["sampled_reward"], floor, ctx.spec.sft.steps, annealed_after_target)
    if warning:
        log.warning(warning)
    elif annealed_after_target and result["sampled_reward"] < floor:
        log.info("RL starts below train.min_start_reward %g after the annealing phase (sft.anneal): the first phase "
                 "reached its target loss, so the low start comes from the anneal's data mix; not warning", floor)
    return result


def rl_step(ctx: RunContext, step: int) -> dict[str, float]:
    t0 = time.perf_counter()
    groups = ctx.sampler.next_groups(ctx.spec.train.tasks_per_step, ctx.spec.rollout.group_size)
    trajs = shape_groups(ctx.rollout([ep for g in groups for ep in g], ctx.runtime.sampling), ctx.runtime.reward_terms)
    t_gen = time.perf_counter() - t0
    m = ray.get(ctx.learner.train_step.remote(trajs, "rl"))
    version = ctx.publish_weights()
    times = StepTimes(time.perf_counter() - t0, t_gen, m.step_s)
    return ctx.metrics.write("rl", step, rl_record(trajs, m, version, times))


def restore(ctx: RunContext, folder: Path) -> int:
    """Learner (weights, optimiser, RNG) and sampler position from a checkpoint; returns its step.
    The engines were started from the same folder's weights."""
    state = json.loads((folder / RUN_STATE).read_text())
    ray.get(ctx.learner.load.remote(str(folder)))
    ctx.sampler.restore(SamplerState(state["sampler_position"]))
    return int(state["step"])


def train(ctx: RunContext, checkpoint) -> dict[str, dict[str, float]]:
    resume = find_checkpoint(ctx.run_dir, RUN_STATE)
    if resume is None:
        before, done = evaluate_start(ctx, cold_start(ctx)), 0
    else:
        done, before = restore(ctx, resume), previous_eval(ctx.run_dir, "before_rl")
    total = ctx.spec.train.steps
    progress = Progress(total, ctx.spec.logging.progress, label="rl")
    rounds: list[dict] = []
    for step in range(done + 1, total + 1):
        rec = rl_step(ctx, step)
        progress.update(step, {"reward": rec["reward"], "tok/s": rec["gen_tokens_per_s"], "step_s": rec["step_s"],
                               "staleness": rec.get("staleness_max", 0.0), "mismatch": rec["mismatch"]})
        rounds += run_rounds(ctx, rounds_after(ctx.spec, step), evaluate)
        if ctx.spec.train.eval_every and step % ctx.spec.train.eval_every == 0 and step < total:
            evaluate(ctx, step, "during_rl")
        if step % ctx.spec.train.checkpoint_every == 0 or step == total:
            checkpoint(ctx, step)
    progress.close()
    after = evaluate(ctx, total, "after_rl")
    if total == 0:
        checkpoint(ctx, 0)
    return {"before_rl": before, "after_rl": after, **({"rounds": rounds} if rounds else {})}
