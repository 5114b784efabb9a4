"""pass@k estimator, scoring of episodes and held-out task selection for `kpop eval` (no engine)."""

import itertools
import math

import pytest

from kpop.eval.passk import mean_pass_at_k, pass_at_k
from kpop.eval.runner import EvalResult, score
from kpop.eval.table import format_table
from kpop.eval.tasks import held_out_tasks
from kpop.runtime.recorded import find_run_spec
from kpop.spec.envs import EnvEntrySpec
from kpop.tasks import TaskSampler
from kpop.trajectory import Trajectory


def _brute_force(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (c of them correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_hand_computed_values():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)          # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)                 # pass@1 = c / n
    assert pass_at_k(4, 1, 4) == 1.0 and pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(20, 5, 3) == pytest.approx(1 - math.comb(15, 3) / math.comb(20, 3))


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_enumeration_of_all_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_rejects_impossible_counts_and_means_over_tasks():
    for bad in [(4, 5, 1), (4, 1, 0), (4, 1, 5), (3, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)
    assert mean_pass_at_k([(4, 0), (4, 4), (4, 2)], 1) == pytest.approx((0 + 1 + 0.5) / 3)
    assert mean_pass_at_k([], 2) == 0.0


def _traj(env: str, reward: float, gen: int = 3) -> Trajectory:
    n = 2 + gen
    return Trajectory(task_id="t", env_id=env, token_ids=list(range(n)), loss_mask=[0, 0] + [1] * gen,
                      logprobs=[0.0, 0.0] + [-0.5] * gen, versions=[-1, -1] + [0] * gen, reward=reward,
                      reward_parts={"task": reward})


def test_score_combines_greedy_and_sampled_episodes():
    greedy = [_traj("a", 1.0, gen=4), _traj("a", 0.0, gen=2)]
    sampled = [[_traj("a", 1.0), _traj("a", 0.0), _traj("a", 0.0), _traj("a", 0.0)],
               [_traj("a", 0.0)] * 4]
    row = score("a", greedy, sampled, k=2)
    assert row.tasks == 2 and row.greedy_reward == 0.5 and row.greedy_pass == 0.5 and row.greedy_gen_tokens == 3.0
    assert row.sampled_reward == pytest.approx(1 / 8) and row.greedy_reward_parts == {"task": 0.5}
    assert row.pass_at[1] == pytest.approx((0.25 + 0) / 2)
    assert row.pass_at[2] == pytest.approx((pass_at_k(4, 1, 2) + 0) / 2)


def test_held_out_tasks_are_the_runs_own_held_out_tasks_filtered_by_env():
    envs = [EnvEntrySpec(name="calculator", weight=1.0), EnvEntrySpec(name="other", weight=1.0)]
    run_tasks = TaskSampler(envs, 7).held_out(12)
    assert held_out_tasks(envs, 7, ["calculator", "other"], 12) == run_tasks
    only = held_out_tasks(envs, 7, ["calculator"], 12)
    assert only == [ep for ep in run_tasks if ep.env_name == "calculator"] and only
    fresh = held_out_tasks(envs, 7, ["search"], 3)
    assert [ep.env_name for ep in fresh] == ["search"] * 3
    assert all(ep.seed >= 1 << 30 for ep in fresh)                   # held-out seed range


def test_find_run_spec_walks_up_from_a_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoints" / "step_000002"
    ckpt.mkdir(parents=True)
    (tmp_path / "checkpoints" / "last").symlink_to("step_000002")
    assert find_run_spec(tmp_path / "checkpoints" / "last") is None
    (tmp_path / "spec.json").write_text('{"seed": 3}')
    assert find_run_spec(tmp_path / "checkpoints" / "last") == {"seed": 3}


def test_table_and_json_name_every_env_and_k():
    row = score("calculator", [_traj("calculator", 1.0)], [[_traj("calculator", 1.0), _traj("calculator", 0.0)]], k=2)
    result = EvalResult("ckpt", 2, 2, 1.0, 0, [row], True)
    text = format_table(result)
    assert "calculator" in text and "pass@1" in text and "pass@2" in text and "0.500" in text
    assert result.to_json()["rows"][0]["pass_at"] == {"pass@1": 0.5, "pass@2": 1.0}
