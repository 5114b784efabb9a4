"""Cheap limits first: `kpop serve` (built-in engine, tiny Llama) rejects oversized requests at once and
keeps serving everyone else.

One server for the module, started with `--max-prompt-chars 5000` (the flag's value replaces the
derived default) and the derived default body bound (1 MiB + 6 x 512 x the longest token).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kpop.deploy.openai_api.limits import default_limits

NAME = "tiny"
PROMPT_CHARS = 5000
CONTEXT = 512  # the tiny Llama's max_position_embeddings
CHAT = "/v1/chat/completions"
VALID = [{"role": "user", "content": "What is 2+3?"}]


@pytest.fixture(scope="module")
def server(tiny_llama_dir):
    from kpop.deploy.server_process import ServerProcess

    with ServerProcess(tiny_llama_dir, name=NAME, backend="builtin",
                       extra_args=["--max-prompt-chars", str(PROMPT_CHARS)]) as proc:
        yield proc


def chat_body(content: str) -> bytes:
    return json.dumps({"model": NAME, "messages": [{"role": "user", "content": content}], "max_tokens": 4}).encode()


def post(server, body, path: str = CHAT) -> httpx.Response:
    return httpx.post(server.base_url + path, content=body, headers={"content-type": "application/json"}, timeout=30)


def test_default_bounds_are_what_the_context_can_hold(tiny_tokenizer):
    longest = max(len(token) for token in tiny_tokenizer.get_vocab())  # independent of limits.py
    limits = default_limits(tiny_tokenizer, CONTEXT)
    assert limits.max_prompt_chars == CONTEXT * longest
    assert limits.max_body_bytes == (1 << 20) + 6 * CONTEXT * longest
    # no prompt over the bound could fit: even its longest tokens would overflow the context
    assert len(tiny_tokenizer.encode("x" * (limits.max_prompt_chars + 1), add_special_tokens=False)) > CONTEXT


def test_health_reports_the_flag_and_the_derived_default(server, tiny_tokenizer):
    limits = httpx.get(server.base_url + "/health").json()["limits"]
    assert limits == {"max_prompt_chars": PROMPT_CHARS,
                      "max_body_bytes": default_limits(tiny_tokenizer, CONTEXT).max_body_bytes}


def test_oversized_bodies_get_413_and_long_prompts_400_before_tokenisation(server):
    limit = httpx.get(server.base_url + "/health").json()["limits"]["max_body_bytes"]
    declared = post(server, chat_body("7 " * limit))
    assert declared.status_code == 413
    assert declared.json()["error"] == {
        "message": f"The request body is {len(chat_body('7 ' * limit))} bytes; this server accepts at most "
                   f"{limit} bytes. Send a shorter prompt.",
        "type": "invalid_request_error", "param": None, "code": "request_too_large"}

    def chunked():  # no Content-Length: the bound is enforced on the bytes read
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    streamed = post(server, chunked())
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "request_too_large"

    # one character over the bound: rejected on its length; at the bound: tokenised, then rejected on tokens
    over = post(server, chat_body("7" * (PROMPT_CHARS + 1))).json()["error"]
    assert over["code"] == "context_length_exceeded" and over["param"] == "messages"
    assert f"your messages have {PROMPT_CHARS + 1} characters" in over["message"]
    at = post(server, chat_body("7 " * (PROMPT_CHARS // 2))).json()["error"]
    assert at["code"] == "context_length_exceeded" and "tokens" in at["message"] and "characters" not in at["message"]
    completion = post(server, json.dumps({"model": NAME, "prompt": ["hi", "x" * (PROMPT_CHARS + 1)]}), "/v1/completions")
    assert completion.status_code == 400 and completion.json()["error"]["param"] == "prompt"

    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=30)
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "7 " * limit}])
    assert exc.value.status_code == 413 and exc.value.body["code"] == "request_too_large"
    ok = client.chat.completions.create(model=NAME, messages=VALID, max_tokens=4)
    assert ok.choices[0].message.role == "assistant"


# ----------------------------------------------------------------------------------------------- abuse

WORKERS, PER_WORKER, ROUNDS, BIG_PER_ROUND = 4, 10, 4, 2


async def run_round(client: openai.AsyncOpenAI, url: str, big: bytes | None):
    """WORKERS clients each send PER_WORKER short chat requests back to back; with `big`, that body is
    sent BIG_PER_ROUND times, each once a given share of the valid requests has completed.
    Returns (valid latencies s, [(status, round trip s)] of the big bodies)."""
    latencies: list[float] = []
    bigs: list[tuple[int, float]] = []
    total = WORKERS * PER_WORKER
    triggers = {total * k // (BIG_PER_ROUND + 1) for k in range(1, BIG_PER_ROUND + 1)} if big else set()
    sends: list[asyncio.Task] = []
    async with httpx.AsyncClient(timeout=10) as http:
        async def send_big():
            start = time.perf_counter()
            r = await http.post(url + CHAT, content=big, headers={"content-type": "application/json"})
            bigs.append((r.status_code, time.perf_counter() - start))
            assert r.json()["error"]["code"] == "request_too_large"

        async def worker():
            for _ in range(PER_WORKER):
                start = time.perf_counter()
                reply = await client.chat.completions.create(model=NAME, messages=VALID, max_tokens=4, temperature=0)
                latencies.append(time.perf_counter() - start)
                assert reply.choices[0].finish_reason in ("stop", "length")
                if len(latencies) in triggers:
                    sends.append(asyncio.create_task(send_big()))

        await asyncio.gather(*(worker() for _ in range(WORKERS)))
        await asyncio.gather(*sends)
    return latencies, bigs


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def rejected_within(metrics_text: str, seconds: float) -> tuple[float, float]:
    """(requests never routed, those answered within `seconds`) from the server's latency histogram."""
    total = fast = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.labels.get("route") == "unmatched" and s.name == "kpop_http_request_seconds_count":
                total = s.value
            if s.labels.get("route") == "unmatched" and s.name == "kpop_http_request_seconds_bucket" \
                    and float(s.labels["le"]) == seconds:
                fast = s.value
    return total, fast


async def test_a_10_mb_body_is_rejected_at_once_and_does_not_slow_valid_requests(server):
    big = chat_body("7 " * 5_000_000)
    assert len(big) > 10_000_000
    client = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
    before_total, before_fast = rejected_within(httpx.get(server.base_url + "/metrics").text, 0.1)
    await run_round(client, server.base_url, None)  # warm-up: first forwards, connections
    baseline, abused, bigs = [], [], []
    for _ in range(ROUNDS):  # alternate, so both conditions see the same background load
        baseline += (await run_round(client, server.base_url, None))[0]
        latencies, sent = await run_round(client, server.base_url, big)
        abused += latencies
        bigs += sent
    await client.close()
    total, fast = rejected_within(httpx.get(server.base_url + "/metrics").text, 0.1)
    round_trips = sorted(t for _, t in bigs)
    print(f"\nvalid p99: {p99(baseline) * 1e3:.1f} ms alone, {p99(abused) * 1e3:.1f} ms with {len(bigs)} 10 MB bodies; "
          f"10 MB round trip (upload included) median {round_trips[len(bigs) // 2] * 1e3:.1f} ms, "
          f"max {round_trips[-1] * 1e3:.1f} ms")
    assert len(bigs) == ROUNDS * BIG_PER_ROUND and all(status == 413 for status, _ in bigs)
    assert total - before_total == len(bigs), "every 10 MB body was answered without reaching a route"
    assert fast - before_fast == len(bigs), "the server answered a 10 MB body more than 100 ms after it arrived"
    assert round_trips[-1] < 1.0
    assert p99(abused) <= 2 * p99(baseline)
