"""When the cold start stops, and whether the policy RL starts from is good enough to improve.

`reached_target`: the cold start stops once the mean loss of its last TARGET_WINDOW steps is at most
`sft.target_loss` (one step's loss is noisy). The step at which a tiny model learns to copy varies
with seed and machine; the loss it must reach does not.


Group-relative RL learns only from groups whose samples disagree: a policy whose *samples* almost
never succeed gives almost no group a non-zero advantage, so RL steps then change nothing (the
quickstart's old failure mode: a cold start that did not learn to copy digits started RL at
held-out reward 0.09 greedy, 0.055 sampled, and 30 steps left it there). What RL learns from is
the sampled reward, not the greedy one: a policy that succeeds only when it samples its less likely
behaviour (the quickstart's tool call, 40% of the time) has greedy reward near 0 and plenty to learn
from. After the cold start the loop evaluates the held-out tasks; `start_warning` turns that
evaluation into a warning when the sampled reward is below `train.min_start_reward`, naming what to
change. It never stops the run: a user may know better.

A cold start that reached its target loss and then annealed on another data mix (sft.anneal) starts
RL low on purpose (the quickstart: the anneal's demonstrations mostly answer from memory, so the
policy rarely calls the tool it can use); the first phase's target loss shows the skill was learned,
so no warning is given, only a note saying why.
"""

from __future__ import annotations

TARGET_WINDOW = 10


def reached_target(losses: list[float], target: float) -> bool:
    """Whether the mean of the last TARGET_WINDOW losses is at most `target` (0: never)."""
    if target <= 0 or len(losses) < TARGET_WINDOW:
        return False
    return sum(losses[-TARGET_WINDOW:]) / TARGET_WINDOW <= target


def start_warning(greedy: float, sampled: float, floor: float, sft_steps: int,
                  annealed_after_target: bool = False) -> str | None:
    """The warning text when `sampled < floor`, else None (a floor of 0 never warns; nor does a
    start set by an anneal after the first phase reached its target loss)."""
    if sampled >= floor or floor <= 0 or annealed_after_target:
        return None
    if sft_steps == 0:
        fix = "give the run a cold start (sft.steps > 0) or start from a trained checkpoint (model.path)"
    else:
        fix = (f"lengthen the cold start (sft.steps, now {sft_steps}) or change its learning rate (sft.lr), "
               "or use a larger model")
    return (f"the policy RL starts from is weak: held-out reward greedy {greedy:.3f}, sampled {sampled:.3f}, "
            f"below train.min_start_reward {floor:g}. RL learns only from groups whose samples disagree, "
            f"so it is unlikely to improve this policy. To fix: {fix}; "
            "set train.min_start_reward=0 to silence this warning.")
