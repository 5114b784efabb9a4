"""The environment worker's reference-solver episodes: option overrides (RunSpec sft.anneal) are
merged over the configured options for that episode only."""

import re

import pytest
from transformers import AutoTokenizer

from kpop.rollout.agent_loop import Episode, LoopLimits
from kpop.rollout.env_worker import EnvConfig, EnvWorker, WorkerConfig


def used_tool(traj) -> bool:
    return traj.reward_parts.get("used_tool") == 1.0


@pytest.mark.asyncio
async def test_overrides_change_the_solver_for_that_episode_only(tiny_llama_dir):
    envs = (EnvConfig("calculator", {"max_operand": 20}, ()),)
    worker = EnvWorker(WorkerConfig(str(tiny_llama_dir), envs, LoopLimits()))
    episodes = [Episode("calculator", s, f"g{s}") for s in range(6)]
    plain = [await worker.solve(ep) for ep in episodes]
    memory = [await worker.solve(ep, {"reference_tool_rate": 0.0}) for ep in episodes]
    again = [await worker.solve(ep) for ep in episodes]
    assert all(used_tool(t) and t.reward == 1.0 for t in plain)
    assert not any(used_tool(t) for t in memory) and all(t.reward == 1.0 for t in memory)   # answered from memory
    assert all(t.num_generated < p.num_generated for t, p in zip(memory, plain))
    assert [t.token_ids for t in again] == [t.token_ids for t in plain]                     # nothing stuck
    # the configured option still holds under the override: operands stay <= 20
    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    questions = [re.search(r"What is (\d+)[-+*](\d+)\?", tok.decode(t.token_ids)) for t in memory]
    assert all(q and int(q.group(1)) <= 20 and int(q.group(2)) <= 20 for q in questions)


@pytest.mark.asyncio
async def test_many_solves_at_once_wait_for_the_sandbox_outside_their_step_timeout(tiny_llama_dir):
    """A cold start submits its solver episodes all at once; each coding episode's verifier runs in
    the sandbox. With one slot and a step timeout a few executions long, episodes that queued for
    the slot inside their environment step would time out; solves wait for a turn first instead."""
    import asyncio

    from kpop.spec.sandbox import SandboxSpec

    options = {"source": "generated", "templates": ["sum_multiples"], "fix_rate": 0.0, "num_tests": 3}
    envs = (EnvConfig("coding", options, ()),)
    limits = LoopLimits(max_turns=4, max_total_tokens=4096, max_new_tokens=1024, step_timeout_s=1.0)
    worker = EnvWorker(WorkerConfig(str(tiny_llama_dir), envs, limits, SandboxSpec(pool_size=1)))
    # 150 executions of ~20 ms each queue for ~3 s: most would time out queued
    trajs = await asyncio.gather(*(worker.solve(Episode("coding", 2 * s + 1, f"g{s}")) for s in range(150)))
    assert [t.env_error for t in trajs] == [""] * 150 and all(t.reward == 1.0 for t in trajs)
