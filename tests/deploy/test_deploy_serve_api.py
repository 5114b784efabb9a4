"""`kpop serve` (vLLM backend) driven by the official `openai` client, plus malformed raw requests.

One server per module: a tiny Llama that memorised the calculator episode of seed 0, so greedy
decoding writes a real tool call and then the answer.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from kpop.envs.contract import Action, ToolCall
from kpop.envs.families.calculator import evaluate
from kpop.envs.registry import make_env

NAME = "tiny"


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    from kpop.deploy.server_process import ServerProcess
    from kpop.deploy.smoke_model import smoke_checkpoint

    ckpt = smoke_checkpoint(tiny_llama_dir, tmp_path_factory.getbasetemp() / "smoke_calculator")
    with ServerProcess(ckpt, name=NAME) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def task_messages(seed: int):
    env = make_env("calculator")
    task = env.reset_task(seed, None)
    return env, [{"role": m.role, "content": m.content} for m in task.messages], task.tools


def test_models_and_health_describe_the_checkpoint(server, client):
    models = client.models.list().data
    assert [m.id for m in models] == [NAME]
    health = httpx.get(server.base_url + "/health").json()
    assert health["status"] == "ok" and health["backend"] == "vllm"


def test_agent_plays_a_calculator_episode_with_parsed_tool_calls_and_logprobs(client):
    env, messages, tools = task_messages(0)
    first = client.chat.completions.create(model=NAME, messages=messages, tools=tools, temperature=0,
                                           max_tokens=64, logprobs=True)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "calculator" and call.id.startswith("call_")
    expression = json.loads(call.function.arguments)["expression"]
    assert expression == env.expression
    entries = choice.logprobs.content
    assert entries and all(e.logprob <= 0 for e in entries)
    assert "".join(e.token for e in entries).startswith("<tool_call>")
    assert first.usage.completion_tokens >= len(entries)

    # the environment runs the tool; the harness sends its result back
    obs = asyncio.run(env.astep(Action("", [ToolCall("calculator", {"expression": expression}, call.id)])))
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": obs.observations[0].content}]
    second = client.chat.completions.create(model=NAME, messages=messages, tools=tools, temperature=0, max_tokens=32)
    answer = second.choices[0].message.content
    assert second.choices[0].finish_reason == "stop" and not second.choices[0].message.tool_calls
    assert answer.strip() == f"Answer: {evaluate(env.expression)}"
    final = asyncio.run(env.astep(Action(answer)))
    assert final.terminated and final.reward == 1.0


def test_streaming_equals_non_streaming_and_reports_usage(client):
    _, messages, _ = task_messages(1)
    whole = client.chat.completions.create(model=NAME, messages=messages, temperature=0, max_tokens=24)
    chunks = list(client.chat.completions.create(model=NAME, messages=messages, temperature=0, max_tokens=24,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    _, memorised, tools = task_messages(0)  # the episode the smoke model replays
    streamed_tools = list(client.chat.completions.create(model=NAME, messages=memorised, tools=tools, temperature=0,
                                                         max_tokens=64, stream=True))
    calls = [tc for c in streamed_tools if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [tc.function.name for tc in calls] == ["calculator"]


def test_sampling_n_seed_stop_and_completions(client):
    _, messages, _ = task_messages(0)
    a = client.chat.completions.create(model=NAME, messages=messages, n=3, temperature=1.0, top_p=0.9, seed=7,
                                       max_tokens=12)
    assert [c.index for c in a.choices] == [0, 1, 2] and all(c.message.content for c in a.choices)
    assert 3 <= a.usage.completion_tokens <= 3 * 12
    greedy = client.completions.create(model=NAME, prompt="What is 1", max_tokens=8, temperature=0, logprobs=0)
    text = greedy.choices[0].text
    assert len(greedy.choices[0].logprobs.token_logprobs) == greedy.usage.completion_tokens
    if len(text) > 1:
        stop = text[1:3]
        cut = client.completions.create(model=NAME, prompt="What is 1", max_tokens=8, temperature=0, stop=[stop])
        assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"


BAD = [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}), 400, "temperature"),
    (json.dumps({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "n": 1.5}), 400, "n"),
    (json.dumps({"model": NAME, "messages": "hi"}), 400, "messages"),
    (json.dumps({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}), 400, "max_tokens"),
    (json.dumps({"model": NAME, "messages": [{"role": "user", "content": "7 " * 2000}]}), 400, "messages"),
    (json.dumps({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": 5}}), 400, "logit_bias"),
    (json.dumps({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "mystery": 1}), 400, "mystery"),
    (json.dumps({"model": "gpt-nope", "messages": [{"role": "user", "content": "hi"}]}), 404, "model"),
]


def test_malformed_requests_get_openai_errors_and_the_server_keeps_serving(server, client):
    for body, status, param in BAD:
        r = httpx.post(server.base_url + "/v1/chat/completions", content=body,
                       headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
        assert err["param"] == param and err["type"] == "invalid_request_error"
    assert httpx.get(server.base_url + "/v2/nothing").status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=NAME, prompt="hi", max_tokens=4, logprobs=3)
    assert exc.value.body["param"] == "logprobs"
    ok = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert ok.choices[0].message.role == "assistant"
    metrics = httpx.get(server.base_url + "/metrics").text
    assert 'kpop_http_requests_total{route="/v1/chat/completions",status="400"}' in metrics
    assert 'kpop_http_requests_total{route="/v1/chat/completions",status="200"}' in metrics
    assert "kpop_generation_tokens_total" in metrics
