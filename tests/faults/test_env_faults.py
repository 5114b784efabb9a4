"""An environment whose verifier hangs past the step timeout, or raises, costs one episode, not the run.

The environment is the calculator with a faulty verifier on some seeds; episodes are played by the
real environment worker (kpop.rollout.env_worker.EnvWorker, in process) with the reference solver
as the policy, all at once. The fault fires when the verifier is called (observed: the verifier
records that it was entered, and a hung one that it was cancelled), never after a sleep.
"""

from __future__ import annotations

import asyncio

import pytest

from kpop.envs.contract import Action, StepResult
from kpop.envs.families.calculator import CalculatorEnv
from kpop.envs.registry import register_env
from kpop.metrics import MetricsWriter, read_metrics, trajectory_stats
from kpop.rollout.agent_loop import Episode, LoopLimits
from kpop.rollout.env_worker import EnvConfig, EnvWorker, WorkerConfig

pytestmark = pytest.mark.faults

NAME = "faulty_calculator"
HANG, RAISE = {0, 3}, {1, 4}   # seeds whose verifier hangs / raises; 2 and 5 are healthy
entered: dict[int, str] = {}   # seed -> "hang" | "cancelled" | "raise" | "ok"


@register_env(NAME)
class FaultyCalculatorEnv(CalculatorEnv):
    def make_task(self, seed, options):
        self.seed = seed
        return super().make_task(seed, options)

    async def astep(self, action: Action) -> StepResult:
        if action.tool_calls:
            return await super().astep(action)
        return await self.verify(action)  # the final answer: graded by the verifier

    async def verify(self, action: Action) -> StepResult:
        if self.seed in HANG:
            entered[self.seed] = "hang"
            try:
                await asyncio.Event().wait()  # never set: a verifier that hangs
            except asyncio.CancelledError:
                entered[self.seed] = "cancelled"
                raise
        if self.seed in RAISE:
            entered[self.seed] = "raise"
            raise RuntimeError("the verifier crashed")
        entered[self.seed] = "ok"
        return await super().astep(action)


@pytest.fixture
def worker(tiny_llama_dir):
    config = WorkerConfig(str(tiny_llama_dir), (EnvConfig(NAME, {}, ()),), LoopLimits(max_turns=4, step_timeout_s=0.5))
    return EnvWorker(config)


async def test_hanging_or_raising_verifier_ends_its_episode_with_an_error_and_reward_0(worker, tmp_path):
    entered.clear()
    trajs = await asyncio.gather(*(worker.solve(Episode(NAME, seed, f"g{seed}")) for seed in range(6)))
    by_seed = dict(zip(range(6), trajs))
    assert entered == {0: "cancelled", 3: "cancelled", 1: "raise", 4: "raise", 2: "ok", 5: "ok"}
    for seed, t in by_seed.items():
        kind = "timeout" if seed in HANG else "exception" if seed in RAISE else ""
        assert t.env_error == kind
        if kind:
            assert t.finish_reason == "env_error" and t.reward == 0.0 and t.num_turns == 2
        else:  # the healthy episodes of the same batch finished normally
            assert t.finish_reason == "terminated" and t.reward == 1.0

    writer = MetricsWriter(tmp_path)
    writer.write("rl", 1, trajectory_stats(trajs))
    writer.close()
    [record] = read_metrics(tmp_path)
    assert record["env_errors"] == 4
    assert record[f"env_errors/{NAME}/timeout"] == 2 and record[f"env_errors/{NAME}/exception"] == 2
    assert record[f"episodes/{NAME}"] == 6 and record[f"pass_rate/{NAME}"] == pytest.approx(2 / 6)


def test_an_episode_without_errors_has_no_per_kind_keys(worker):
    traj = asyncio.run(worker.solve(Episode(NAME, 2, "g")))
    stats = trajectory_stats([traj])
    assert stats["env_errors"] == 0 and not [k for k in stats if k.startswith("env_errors/")]
