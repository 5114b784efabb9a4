"""The Trajectory record keeps its invariants; the builder produces only valid records."""

import math

import pytest

from kpop.trajectory import PROMPT_VERSION, Timing, Trajectory, TrajectoryBuilder


def make(**overrides):
    fields = dict(task_id="t", env_id="e", token_ids=[1, 2, 3, 4], loss_mask=[0, 0, 1, 1],
                  logprobs=[0.0, 0.0, -0.5, -1.0], versions=[-1, -1, 3, 4], reward=1.0)
    fields.update(overrides)
    return Trajectory(**fields)


def test_valid_record_and_derived_fields():
    t = make()
    assert t.num_generated == 2 and t.prompt_length == 2 and t.min_version() == 3


@pytest.mark.parametrize("overrides, match", [
    (dict(token_ids=[], loss_mask=[], logprobs=[], versions=[]), "at least one"),
    (dict(loss_mask=[0, 0, 1]), "loss_mask has length 3"),
    (dict(versions=[-1, -1, 3]), "versions has length 3"),
    (dict(loss_mask=[1, 0, 1, 1], logprobs=[-0.1, 0.0, -0.5, -1.0], versions=[0, -1, 3, 4]), "start with a prompt token"),
    (dict(logprobs=[0.0, 0.0, 0.5, -1.0]), "finite value <= 0"),
    (dict(logprobs=[0.0, 0.0, math.nan, -1.0]), "finite value <= 0"),
    (dict(versions=[-1, -1, -1, 4]), "policy version -1"),
    (dict(logprobs=[0.0, -0.2, -0.5, -1.0]), "log-prob 0.0 and version -1"),
    (dict(versions=[-1, 0, 3, 4]), "log-prob 0.0 and version -1"),
    (dict(loss_mask=[0, 2, 1, 1]), "expected 0 or 1"),
    (dict(reward=math.inf), "finite"),
    (dict(reward_parts={"x": math.nan}), "finite"),
])
def test_broken_records_are_rejected(overrides, match):
    with pytest.raises(ValueError, match=match):
        make(**overrides)


def test_builder_keeps_segments_in_order_with_versions():
    b = TrajectoryBuilder("task", "env", "g")
    b.add_context([5, 6])
    b.add_generated([7, 8], [-0.1, -0.2], [0, 1])
    b.add_context([9])
    b.add_generated([10], [-0.3], [1])
    t = b.build(1.0, {"correct": 1.0}, 2, "terminated", Timing(1.0, 2.0, 3.0))
    assert t.token_ids == [5, 6, 7, 8, 9, 10]
    assert t.loss_mask == [0, 0, 1, 1, 0, 1]
    assert t.versions == [PROMPT_VERSION, PROMPT_VERSION, 0, 1, PROMPT_VERSION, 1]
    assert t.logprobs == [0.0, 0.0, -0.1, -0.2, 0.0, -0.3]
    assert t.min_version() == 0 and t.group_id == "g"


def test_builder_rejects_mismatched_generated_segment():
    b = TrajectoryBuilder("task", "env")
    with pytest.raises(ValueError):
        b.add_generated([1, 2], [-0.1], [0, 0])


def test_with_reward_returns_a_new_record():
    t = make()
    u = t.with_reward(0.25, {"a": 0.25})
    assert u.reward == 0.25 and t.reward == 1.0 and u.token_ids == t.token_ids
