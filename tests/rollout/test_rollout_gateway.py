"""The training gateway: an `openai`-client agent harness plays calculator through it, and the
recorded Trajectory is, turn by turn, exactly what the engine received and produced."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from kpop.envs.contract import Action, ToolCall
from kpop.envs.registry import make_env
from kpop.rollout.engine import (
    EngineLoad,
    GenerationRequest,
    GenerationResult,
    TokenDelta,
)


class RecordingEngine:
    """Wraps an Engine and keeps (prompt ids, result) of every generation."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        result = await self.inner.generate(request)
        self.calls.append((list(request.prompt_ids), result))
        return result

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        ids, lps, vs = [], [], []
        async for delta in self.inner.stream(request):
            ids += delta.token_ids
            lps += delta.logprobs
            vs += delta.versions
            yield delta
        self.calls.append((list(request.prompt_ids), GenerationResult(request.request_id, ids, lps, vs, "stop")))

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    def load(self) -> EngineLoad:
        return self.inner.load()


class ScriptedEngine:
    """Answers every request with the same token ids (log-prob -0.5, version 3)."""

    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids = token_ids

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        n = len(self.token_ids)
        return GenerationResult(request.request_id, list(self.token_ids), [-0.5] * n, [3] * n, "stop")

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        for t in self.token_ids:
            yield TokenDelta([t], [-0.5], [3])

    async def abort(self, request_id: str) -> None:
        return None

    def load(self) -> EngineLoad:
        return EngineLoad(0, 0, 3, False, 0)


async def play_calculator(client: openai.AsyncOpenAI, seed: int, stream_second: bool = False) -> tuple[float, int]:
    """An agent harness written against the OpenAI API only: (reward, turns)."""
    env = make_env("calculator")
    task = env.reset_task(seed, None)
    messages = [{"role": m.role, "content": m.content} for m in task.messages]
    for turn in range(1, 5):
        kwargs = {"model": "policy", "messages": messages, "tools": task.tools, "temperature": 0, "max_tokens": 64}
        if stream_second and turn == 2:
            text = "".join([c.choices[0].delta.content or "" async for c in
                            await client.chat.completions.create(stream=True, **kwargs) if c.choices])
            message = {"role": "assistant", "content": text}
            action = Action(text)
        else:
            reply = (await client.chat.completions.create(**kwargs)).choices[0].message
            message = reply.model_dump(exclude_none=True)
            calls = [ToolCall(c.function.name, json.loads(c.function.arguments), c.id) for c in reply.tool_calls or []]
            action = Action(reply.content or "", calls)
        messages.append(message)
        step = await env.astep(action)
        if step.terminated or step.truncated:
            return step.reward, turn
        messages += [{"role": "tool", "content": o.content, "tool_call_id": o.tool_call_id} for o in step.observations]
    return 0.0, 4


@pytest.mark.slow
async def test_openai_harness_trajectory_equals_engine_io_turn_by_turn(tiny_llama_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    from kpop.deploy.smoke_model import reference_sequences, smoke_checkpoint
    from kpop.rollout.gateway import Gateway
    from kpop.rollout.vllm_engine import VLLMEngine

    # both run episodes with asyncio.run: off this test's event loop
    ckpt = await asyncio.to_thread(smoke_checkpoint, tiny_llama_dir, tmp_path_factory.getbasetemp() / "smoke_calculator")
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
    [reference] = await asyncio.to_thread(reference_sequences, tokenizer, "calculator", [0])
    vllm = VLLMEngine(str(ckpt), kv_cache_gib=0.25, max_model_len=512)
    try:
        engine = RecordingEngine(vllm)
        gateway = Gateway(engine, tokenizer, max_model_len=512)
        gateway.open_session("episode-0", task_id="calculator-0", env_id="calculator")
        async with gateway.running() as url:
            client = openai.AsyncOpenAI(base_url=f"{url}/sessions/episode-0/v1", api_key="unused", max_retries=0)
            reward, turns = await play_calculator(client, 0, stream_second=True)
        assert turns == 2 and reward == 1.0
        [traj] = gateway.finish("episode-0", reward, {"correct": reward})
    finally:
        vllm.close()
    assert traj.task_id == "calculator-0" and traj.num_turns == 2 and traj.reward == 1.0
    assert len(engine.calls) == 2
    generated = [i for i, m in enumerate(traj.loss_mask) if m]
    expected_mask_positions = []
    for prompt, result in engine.calls:
        # the engine's prompt is the recorded context so far; its output follows, with mask 1
        assert traj.token_ids[: len(prompt)] == prompt
        end = len(prompt) + len(result.token_ids)
        assert traj.token_ids[len(prompt):end] == result.token_ids
        assert traj.logprobs[len(prompt):end] == result.logprobs and traj.versions[len(prompt):end] == result.versions
        expected_mask_positions += list(range(len(prompt), end))
    assert generated == expected_mask_positions
    assert traj.token_ids == engine.calls[-1][0] + engine.calls[-1][1].token_ids
    # and it is the same record the agent loop makes for the same episode
    assert traj.token_ids == reference


async def test_rewritten_history_starts_a_counted_new_segment(tiny_tokenizer):
    from kpop.rollout.gateway import Gateway

    reply = tiny_tokenizer.encode("Answer: 5", add_special_tokens=False) + [tiny_tokenizer.eos_token_id]
    gateway = Gateway(ScriptedEngine(reply), tiny_tokenizer, max_model_len=512)
    user = {"role": "user", "content": "What is 2+3?"}
    async with gateway.running() as url, httpx.AsyncClient(timeout=30) as http:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                                    default_headers={"X-KPop-Session": "s1"})
        first = (await client.chat.completions.create(model="policy", messages=[user])).choices[0].message
        assert first.content == "Answer: 5"
        history = [user, first.model_dump(exclude_none=True), {"role": "user", "content": "Sure?"}]
        await client.chat.completions.create(model="policy", messages=history)
        summary = (await http.get(f"{url}/sessions/s1")).json()
        assert [s["turns"] for s in summary["segments"]] == [2] and summary["rewrites"] == 0
        rewritten = [user, {"role": "assistant", "content": "something else"}, {"role": "user", "content": "Sure?"}]
        await client.chat.completions.create(model="policy", messages=rewritten)
        assert gateway.sessions["s1"].rewrites == 1
        no_session = await http.post(f"{url}/v1/chat/completions", json={"model": "policy", "messages": [user]})
        assert no_session.status_code == 400 and no_session.json()["error"]["code"] == "missing_session"
        two = await http.post(f"{url}/sessions/s1/v1/chat/completions", json={"model": "policy", "messages": [user], "n": 2})
        assert two.status_code == 400 and two.json()["error"]["param"] == "n"
    first_seg, second_seg = gateway.finish("s1", 0.5)
    assert first_seg.num_turns == 2 and second_seg.num_turns == 1 and first_seg.reward == second_seg.reward == 0.5
    # turn 2 of the first segment appended only the new user message to the recorded context
    prompt = tiny_tokenizer.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    prompt_ids = tiny_tokenizer.encode(prompt, add_special_tokens=False)
    n = len(prompt_ids)
    assert first_seg.token_ids[: n + len(reply)] == prompt_ids + reply
    assert first_seg.loss_mask == [0] * n + [1] * len(reply) + [0] * (len(first_seg.token_ids) - 2 * len(reply) - n) + [1] * len(reply)
    assert first_seg.logprobs[n: n + len(reply)] == [-0.5] * len(reply) and first_seg.versions[n] == 3
