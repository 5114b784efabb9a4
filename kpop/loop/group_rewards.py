"""Group-level reward terms (an environment's `rewards:` of type dynamic_length), applied where
groups are complete: on the batch a loop is about to train, before the learner computes advantages.

Contract: `shape_groups(trajs, terms)` returns the trajectories in their order; those of a group (same
group id, else task id: the learner's grouping) whose environment has group-level terms carry the
shaped reward and the amount each term added as the reward part `shape/<type>`, so it is logged as
`reward/shape/<type>`. Correctness is the task score (kpop.report.stats.passed: the `task` part, not
the shaped reward), length the generated tokens. Others come back as the same objects. Episode-level
terms are the environment's (kpop.envs.rewards.shape_reward); held-out evaluation has no groups and
gets none of these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kpop.envs.rewards.compose import group_shaping
from kpop.report.stats import passed
from kpop.trajectory import Trajectory


def shape_groups(trajs: Sequence[Trajectory], terms: Mapping[str, Sequence]) -> list[Trajectory]:
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(trajs):
        groups.setdefault(t.group_id or t.task_id, []).append(i)
    out = list(trajs)
    for members in groups.values():
        group = [trajs[i] for i in members]
        shaped = group_shaping([t.reward for t in group], [t.num_generated for t in group], [passed(t) for t in group],
                               terms.get(group[0].env_id, ()))
        for i, t, (reward, parts) in zip(members, group, shaped):
            if parts:
                out[i] = t.with_reward(reward, {**t.reward_parts, **parts})
    return out
