"""Group-level reward terms on complete groups (kpop.loop.group_rewards), as both loops apply them
to the batch they train."""

import pytest

from kpop.loop.group_rewards import shape_groups
from kpop.spec.envs import DynamicLengthTermSpec, FormatTermSpec
from kpop.trajectory import Trajectory


def traj(n_gen: int, task: float, group: str = "g", env: str = "calculator") -> Trajectory:
    """A trajectory of `n_gen` generated tokens whose task score (and unshaped reward) is `task`."""
    n = n_gen + 1
    return Trajectory(f"t-{group}", env, list(range(n)), [0] + [1] * n_gen, [0.0] + [-0.1] * n_gen,
                      [-1] + [0] * n_gen, reward=task, reward_parts={"task": task}, group_id=group)


TERMS = {"calculator": (DynamicLengthTermSpec(alpha=0.2),)}


def test_the_shorter_of_two_correct_samples_gets_the_larger_total_reward():
    short, long, wrong = traj(5, 1.0), traj(25, 1.0), traj(3, 0.0)
    out = shape_groups([long, short, wrong], TERMS)
    by_len = {t.num_generated: t for t in out}
    assert by_len[5].reward > by_len[25].reward
    # p(l) = 0.5 - (l - 3) / 22: the shortest sample of the group is the wrong one
    assert by_len[5].reward == pytest.approx(1.0 + 0.2 * (0.5 - 2 / 22))
    assert by_len[25].reward == pytest.approx(1.0 - 0.2 * 0.5)
    assert by_len[3].reward == 0.0                          # a wrong sample is never rewarded for length
    for t in out:
        assert t.reward_parts["shape/dynamic_length"] == pytest.approx(t.reward - t.reward_parts["task"])
        assert t.reward_parts["task"] in (0.0, 1.0)         # correctness stays the unshaped task score
    assert [t.num_generated for t in out] == [25, 5, 3]     # order kept


def test_groups_are_shaped_separately_and_other_envs_are_left_alone():
    a = [traj(4, 1.0, "a"), traj(8, 1.0, "a")]
    b = [traj(40, 1.0, "b"), traj(80, 1.0, "b")]
    other = [traj(4, 1.0, "c", env="search"), traj(8, 1.0, "c", env="search")]
    out = shape_groups([*a, *b, *other], TERMS)
    assert [t.reward for t in out[:4]] == pytest.approx([1.1, 0.9, 1.1, 0.9])   # each group's own l_min, l_max
    assert out[4:] == other and out[4] is other[0]


def test_episode_level_terms_are_not_applied_again():
    batch = [traj(4, 1.0), traj(8, 1.0)]
    assert shape_groups(batch, {"calculator": (FormatTermSpec(),)}) == batch
