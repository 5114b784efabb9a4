"""The "rl" metrics record of one step, built the same way by both loops.

`rl_record` turns a trained batch, the learner's StepMetrics and the step's timings into the keys
every RL step logs (definitions: kpop.metrics.KEYS). `policy_version` is the version, in the
engines' numbering, of the policy the step trains: the staleness keys count each generated token's
gap to it (None: the newest version in the batch, which is the trained policy in the synchronous
loop). The KPop loop adds its scheduler keys to the record; nothing here depends on the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kpop.learner.learner import StepMetrics
from kpop.loop.context import summarize
from kpop.trajectory import Trajectory


@dataclass(frozen=True)
class StepTimes:
    step_s: float   # the whole step
    gen_s: float    # until the batch was ready
    train_s: float  # the learner step


def rl_record(trajs: list[Trajectory], m: StepMetrics, version: int, times: StepTimes,
              policy_version: int | None = None) -> dict[str, Any]:
    gen_tokens = sum(t.num_generated for t in trajs)
    return {
        **summarize(trajs, policy_version),
        "loss": m.loss, "grad_norm": m.grad_norm, "mismatch": m.mismatch,
        "clipped_fraction": m.clipped_fraction, "masked_fraction": m.masked_fraction,
        "trained_fraction": m.tokens / max(gen_tokens, 1),
        "version": version, "step_s": times.step_s, "gen_s": times.gen_s, "train_s": times.train_s,
        "gen_tokens_per_s": gen_tokens / max(times.gen_s, 1e-9),
        "tokens_per_s": gen_tokens / max(times.step_s, 1e-9),
        **m.moe_load, **m.mtp, **m.quant,
    }
