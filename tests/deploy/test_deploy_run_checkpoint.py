"""A checkpoint written by `kpop run` is served by `kpop serve` and answers a task of its environment,
played by an `openai`-client agent."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from kpop.envs.contract import Action, ToolCall
from kpop.envs.registry import make_env
from kpop.spec import load_spec

FAST = ["sft.steps=2", "sft.num_examples=8", "sft.batch_size=4", "train.steps=1", "train.tasks_per_step=1",
        "rollout.group_size=2", "train.eval_tasks=1", "train.checkpoint_every=1", "model.hidden_size=64",
        "model.intermediate_size=128", "model.num_heads=2", "model.num_kv_heads=1", "logging.progress=off"]


@pytest.fixture(scope="module")
def served_run(ray_session, tmp_path_factory):
    from kpop.deploy.server_process import ServerProcess
    from kpop.launch import run

    spec = load_spec(None, [*FAST, f"run_dir={tmp_path_factory.mktemp('served_run')}"])
    run(spec)
    with ServerProcess(spec.run_dir / "checkpoints" / "last") as server:
        yield spec, server


def play(client: openai.OpenAI, model: str, seed: int) -> tuple[float, int]:
    env = make_env("calculator")
    task = env.reset_task(seed, None)
    messages = [{"role": m.role, "content": m.content} for m in task.messages]
    for turn in range(1, 5):
        reply = (client.chat.completions.create(model=model, messages=messages, tools=task.tools,
                                                      max_tokens=48, temperature=0)).choices[0].message
        messages.append(reply.model_dump(exclude_none=True))
        calls = [ToolCall(c.function.name, json.loads(c.function.arguments), c.id) for c in reply.tool_calls or []]
        step = asyncio.run(env.astep(Action(reply.content or "", calls)))
        if step.terminated or step.truncated:
            return step.reward, turn
        messages += [{"role": "tool", "content": o.content, "tool_call_id": o.tool_call_id} for o in step.observations]
    return 0.0, 4


@pytest.mark.slow
def test_run_checkpoint_is_served_and_plays_a_calculator_episode(served_run):
    spec, server = served_run
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    [model] = client.models.list().data
    assert model.id == "last" and model.model_extra["backend"] == "vllm"
    assert model.model_extra["root"] == str((spec.run_dir / "checkpoints" / "last").resolve())
    reward, turns = play(client, model.id, seed=12345)
    assert 0.0 <= reward <= 1.0 and 1 <= turns <= 4
