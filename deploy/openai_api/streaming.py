"""Server-sent events for streamed chat and text completions (OpenAI's chunk format).

Contract:
- Chat: per choice, a first chunk with `{"role": "assistant"}`, content chunks, then a chunk with
  the finish_reason; choices are streamed one after another (each chunk names its index).
  With tools active the choice's content/tool_calls come as one delta once the choice is
  complete. Log-probs, when asked for, ride on the content chunk of the tokens they belong to.
- The recorder (`policy.record`) sees every choice once it is complete, exactly as non-streamed.
- An error after the response started is sent as one `data: {"error": ...}` event, then the
  stream ends; `data: [DONE]` ends every successful stream.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from kpop.deploy.openai_api import schemas as S
from kpop.deploy.openai_api.errors import APIError
from kpop.deploy.openai_api.generation import Finished

if TYPE_CHECKING:
    from kpop.deploy.openai_api.service import OpenAIService, PromptPolicy

DONE = "data: [DONE]\n\n"


def sse(payload) -> str:
    return "data: " + json.dumps(payload, separators=(",", ":")) + "\n\n"


def error_event(exc: Exception) -> str:
    err = exc if isinstance(exc, APIError) else APIError(500, f"generation failed: {type(exc).__name__}: {exc}")
    return sse(err.body())


def _chunk(rid: str, model: str, index: int, delta: dict, finish: str | None = None, logprobs=None) -> str:
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    return sse({"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "choices": [choice]})


async def _chat_choice(svc: OpenAIService, req: S.ChatCompletionRequest, prompt, params, rid: str,
                       index: int, out: Finished) -> AsyncIterator[str]:
    model = svc.info.name
    yield _chunk(rid, model, index, {"role": "assistant", "content": ""})
    tools_active = bool(req.tools) and req.tool_choice != "none"
    async for piece in svc.generator.stream(prompt, params, out):
        if tools_active:
            continue
        logprobs = None
        if req.logprobs:
            logprobs = {"content": [svc.token_logprob(t, lp).model_dump() for t, lp in piece.tokens]}
        if piece.text or logprobs:
            yield _chunk(rid, model, index, {"content": piece.text}, logprobs=logprobs)
    message, reason = svc.message(req, out)
    if tools_active:
        delta = {"content": message.content}
        if message.tool_calls:
            delta["tool_calls"] = [dict(c.model_dump(), index=k) for k, c in enumerate(message.tool_calls)]
        logprobs = svc.chat_logprobs(out).model_dump() if req.logprobs else None
        yield _chunk(rid, model, index, delta, logprobs=logprobs)
    yield _chunk(rid, model, index, {}, finish=reason)


async def chat_stream(svc: OpenAIService, req: S.ChatCompletionRequest, policy: PromptPolicy,
                      prompt: list[int], params: list, rid: str) -> AsyncIterator[str]:
    outs: list[Finished] = []
    try:
        for index, p in enumerate(params):
            out = Finished()
            async for event in _chat_choice(svc, req, prompt, p, rid, index, out):
                yield event
            outs.append(out)
            policy.record(req, prompt, out, svc.message(req, out)[0])
        usage = svc.usage(prompt, outs)
        if req.stream_options and req.stream_options.include_usage:
            yield sse({"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                       "model": svc.info.name, "choices": [], "usage": usage.model_dump()})
    except Exception as exc:  # noqa: BLE001 - headers are sent: the error travels as an event
        yield error_event(exc)
        return
    yield DONE


async def completion_stream(svc: OpenAIService, req: S.CompletionRequest, jobs: list, rid: str) -> AsyncIterator[str]:
    outs: list[Finished] = []

    def chunk(index: int, text: str, finish: str | None, logprobs=None) -> str:
        return sse({"id": rid, "object": "text_completion", "created": int(time.time()), "model": svc.info.name,
                    "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]})

    try:
        for index, (prompt, params) in enumerate(jobs):
            out = Finished()
            async for piece in svc.generator.stream(prompt, params, out):
                logprobs = None
                if req.logprobs is not None:
                    tokens = [svc.tokenizer.decode([t]) for t, _ in piece.tokens]
                    logprobs = {"tokens": tokens, "token_logprobs": [lp for _, lp in piece.tokens],
                                "top_logprobs": [{tok: lp} for tok, (_, lp) in zip(tokens, piece.tokens)]}
                yield chunk(index, piece.text, None, logprobs)
            outs.append(out)
            yield chunk(index, "", out.finish_reason)
        usage = svc.usage(sum(len(p) for p, _ in jobs), outs)
        if req.stream_options and req.stream_options.include_usage:
            yield sse({"id": rid, "object": "text_completion", "created": int(time.time()), "model": svc.info.name,
                       "choices": [], "usage": usage.model_dump()})
    except Exception as exc:  # noqa: BLE001 - headers are sent: the error travels as an event
        yield error_event(exc)
        return
    yield DONE
