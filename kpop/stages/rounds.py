"""Running the rounds that follow one RL step (synchronous loop), through the loop's RunContext.

    evaluate     held-out evaluation before the first round of the step (label before_<kind>)
    each round   preference: the policy now becomes the DPO reference
                 each of its learner steps: prompts from the round's own task stream (kpop.stages.
                 schedule / checks) x G samples with the run's sampling → distill: the shortest
                 correct sample per prompt, cut after its answer (kpop.stages.candidates), one
                 "distill" learner step on them; preference: one "dpo" learner step on the samples
                 (the learner pairs best and worst per prompt under the focus-weighted rubric)
                 → push weights → one record of phase "distill" / "preference"
                 held-out evaluation after it (label after_<kind>); the evaluation before a round
                 is the last one logged before it (after_<kind> of the step's previous round)

A learner step with nothing to train on (no correct sample, no pair) changes nothing, as in RL.
Returns one summary per round ({kind, after_step, before, after}) for the run's summary.json.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

import ray

from kpop.loop.context import RunContext
from kpop.progress import Progress
from kpop.stages.candidates import distill_targets
from kpop.stages.checks import round_envs
from kpop.stages.measures import correct_tokens, mean_rubric
from kpop.stages.schedule import Round
from kpop.tasks import TaskSampler

log = logging.getLogger(__name__)
# what a round's progress line and its closing log line show
SHOWN = {"distill": ("loss", "targets", "pruned", "target_tokens"), "preference": ("loss", "pairs", "pair_accuracy", "rubric")}


def run_rounds(ctx: RunContext, rounds: list[Round], evaluate) -> list[dict[str, Any]]:
    """`evaluate(ctx, step, label)` logs and returns a held-out evaluation (the loop's)."""
    out = []
    before = evaluate(ctx, rounds[0].after_step, f"before_{rounds[0].kind}") if rounds else {}
    for rnd in rounds:
        run_round(ctx, rnd)
        after = evaluate(ctx, rnd.after_step, f"after_{rnd.kind}")
        out.append({"kind": rnd.kind, "after_step": rnd.after_step, "before": before, "after": after})
        log.info("%s round after RL step %d: held-out %s", rnd.kind, rnd.after_step, _change(before, after))
        before = after
    return out


def _change(before: dict[str, Any], after: dict[str, Any]) -> str:
    keys = [k for k in ("reward", "correct_tokens", "rubric") if k in before and k in after]
    return ", ".join(f"{k} {before[k]:.3f} -> {after[k]:.3f}" for k in keys)


def run_round(ctx: RunContext, rnd: Round) -> None:
    envs = round_envs(ctx.spec, rnd.kind)
    if not envs:
        raise ValueError(f"a {rnd.kind} round has no environment to draw from (kpop.stages.checks)")
    sampler = TaskSampler(envs, ctx.spec.seed, stream=rnd.kind)
    sampler.position = rnd.first_draw
    if rnd.kind == "preference":
        ray.get(ctx.learner.reset_reference.remote())
    progress = Progress(rnd.steps, ctx.spec.logging.progress, label=rnd.kind)
    for i in range(rnd.steps):
        groups = sampler.next_groups(rnd.tasks, ctx.spec.rollout.group_size)
        samples = ctx.rollout([ep for g in groups for ep in g], ctx.runtime.sampling)
        record = _distill(ctx, samples) if rnd.kind == "distill" else _preference(ctx, samples)
        ctx.metrics.write(rnd.kind, rnd.first_step + i, {**record, "version": ctx.publish_weights()})
        progress.update(i + 1, {k: record[k] for k in SHOWN[rnd.kind] if k in record})
    progress.close()


def _common(samples, m) -> dict[str, Any]:
    n = max(len(samples), 1)
    return {"episodes": len(samples), "reward": sum(t.reward for t in samples) / n,
            "gen_tokens": sum(t.num_generated for t in samples) / n,
            "loss": m.loss, "grad_norm": m.grad_norm, "tokens": m.tokens}


def _distill(ctx: RunContext, samples) -> dict[str, Any]:
    cfg = ctx.spec.learner.distill
    tok = _tokenizer(str(ctx.model_dir))
    patterns = {e.name: _answer_pattern(e.name) for e in ctx.spec.envs}
    found = distill_targets(samples, cfg.correct_threshold, patterns,
                            lambda ids: tok.decode(ids, skip_special_tokens=True), tok.eos_token_id, cfg.prune, cfg.usual_turns)
    m = ray.get(ctx.learner.train_step.remote(found.targets, "distill"))
    record = {**_common(samples, m), "correct": len(found.correct), "targets": len(found.targets),
              "pruned": found.pruned, "pruned_tokens": found.pruned_tokens, **m.mtp, **m.quant,
              **m.loss_by_env()}
    before, after = correct_tokens(found.correct, cfg.correct_threshold), correct_tokens(found.targets, cfg.correct_threshold)
    return record | ({"correct_tokens": before, "target_tokens": after} if before is not None else {})


def _preference(ctx: RunContext, samples) -> dict[str, Any]:
    m = ray.get(ctx.learner.train_step.remote(samples, "dpo"))
    score = mean_rubric(samples, ctx.spec.learner.preference.rubric_weights)
    return {**_common(samples, m), **m.quant, "pairs": m.pairs, **({"pair_accuracy": m.pair_accuracy} if m.pairs else {}),
            **({"rubric": score} if score is not None else {})}


@cache
def _tokenizer(model_dir: str):
    from kpop.models.tokenizer import load_tokenizer

    return load_tokenizer(model_dir)


def _answer_pattern(name: str) -> str | None:
    from kpop.envs.registry import get_env

    return get_env(name).cls.answer_pattern
