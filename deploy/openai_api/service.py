"""The OpenAI endpoints' logic, independent of HTTP: validated request in, response model or SSE out.

Contract:
- `OpenAIService.chat(req, policy)` forms the prompt through `policy` (stateless rendering for
  `kpop serve`; the session recorder for the training gateway), generates `n` choices and, once
  each choice is complete, hands it to `policy.record` with the exact prompt ids and the engine's
  output (token ids, log-probs, versions), streaming or not.
- Length rules (OpenAI/vLLM): a prompt that leaves no room in `max_model_len` is 400
  `context_length_exceeded`; `max_tokens` larger than what is left is 400 `invalid_value` on
  `max_tokens`; an unset `max_tokens` means "whatever fits".
- Tool calls are parsed only when `tools` are given and `tool_choice` is not "none"; a choice with
  tool calls has finish_reason "tool_calls". A streamed choice with tools active is sent as one
  content/tool_calls delta when it is complete (a half-written call is never streamed).
- Streams end with `data: [DONE]`; with `stream_options.include_usage` a usage chunk precedes it.
- Cheap limits first (limits.py): a prompt over `limits.max_prompt_chars` characters is 400
  `context_length_exceeded` before it is rendered or tokenised; the body bound is enforced earlier,
  by the app's middleware.
- CPU-heavy request work (parsing a large body, rendering the template, tokenising; for the
  training gateway the whole prompt policy) runs on the service's own small thread pool
  (`off_loop`), never on the event loop, so one large request does not stall the others.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from kpop.deploy.openai_api import schemas as S
from kpop.deploy.openai_api.errors import bad_request, model_not_found
from kpop.deploy.openai_api.generation import Finished, Generator
from kpop.deploy.openai_api.limits import RequestLimits, default_limits
from kpop.deploy.openai_api.metrics import ServerMetrics
from kpop.deploy.openai_api.prompting import Prompter, split_tool_calls
from kpop.deploy.openai_api.streaming import chat_stream, completion_stream
from kpop.rollout.engine import Engine


@dataclass(frozen=True)
class ModelInfo:
    name: str
    root: str
    max_model_len: int
    backend: str
    created: int = 0


class PromptPolicy(Protocol):
    def check(self, req: S.ChatCompletionRequest) -> None: ...

    def prompt_ids(self, req: S.ChatCompletionRequest, render: Callable[[], list[int]]) -> list[int]: ...

    def record(self, req: S.ChatCompletionRequest, prompt_ids: list[int], out: Finished,
               message: S.AssistantMessage) -> None: ...


class StatelessPolicy:
    """`kpop serve`: every request is rendered on its own; nothing is recorded."""

    def check(self, req: S.ChatCompletionRequest) -> None:
        return None

    def prompt_ids(self, req: S.ChatCompletionRequest, render: Callable[[], list[int]]) -> list[int]:
        return render()

    def record(self, req, prompt_ids, out, message) -> None:
        return None


PREP_THREADS = 2  # request preparation is short; two threads keep a large prompt from queueing the rest


class OpenAIService:
    def __init__(self, engine: Engine, tokenizer, info: ModelInfo, limits: RequestLimits | None = None) -> None:
        self.engine, self.tokenizer, self.info = engine, tokenizer, info
        self.limits = limits or default_limits(tokenizer, info.max_model_len)
        self.prompter = Prompter(tokenizer)
        self.generator = Generator(engine, tokenizer)
        self.metrics = ServerMetrics(engine)
        self._prep = ThreadPoolExecutor(PREP_THREADS, thread_name_prefix="kpop-openai-prep")

    async def off_loop(self, fn, *args):
        """`fn(*args)` on the service's preparation threads (exceptions propagate)."""
        return await asyncio.get_running_loop().run_in_executor(self._prep, functools.partial(fn, *args))

    def close(self) -> None:
        self._prep.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------------- checks

    def check(self, req: S.ChatCompletionRequest | S.CompletionRequest) -> None:
        if req.model != self.info.name:
            raise model_not_found(req.model)
        if (found := req.unsupported()) is not None:
            raise bad_request(found[1], found[0], "unsupported_parameter")

    def max_tokens(self, prompt_len: int, requested: int | None) -> int:
        room = self.info.max_model_len - prompt_len
        if room <= 0:
            raise bad_request(
                f"This model's maximum context length is {self.info.max_model_len} tokens. However, your "
                f"messages resulted in {prompt_len} tokens. Please reduce the length of the messages.",
                "messages", "context_length_exceeded")
        if requested is None:
            return room
        if requested > room:
            raise bad_request(
                f"max_tokens is too large: {requested}. This model's maximum context length is "
                f"{self.info.max_model_len} tokens and your request has {prompt_len} input tokens "
                f"({requested} > {self.info.max_model_len} - {prompt_len}).", "max_tokens", "invalid_value")
        return requested

    def _params(self, req, max_tokens: int, index: int):
        seed = None if req.seed is None else req.seed + index
        return self.generator.sampling(req.temperature, req.top_p, max_tokens, req.stop_list(), seed)

    # ------------------------------------------------------------------------------- chat

    def _render(self, req: S.ChatCompletionRequest) -> list[int]:
        try:
            return self.prompter.chat_ids(req.messages, req.tools)
        except Exception as exc:  # noqa: BLE001 - a template that rejects the conversation is the client's error
            raise bad_request(f"The chat template could not render these messages: {exc}", "messages") from None

    def message(self, req: S.ChatCompletionRequest, out: Finished) -> tuple[S.AssistantMessage, str]:
        if req.tools and req.tool_choice != "none":
            content, calls = split_tool_calls(out.text, req.tool_choice or "auto")
            if calls:
                return S.AssistantMessage(content=content, tool_calls=calls), "tool_calls"
        return S.AssistantMessage(content=out.text), out.finish_reason

    def chat_logprobs(self, out: Finished) -> S.ChoiceLogprobs:
        return S.ChoiceLogprobs(content=[self.token_logprob(t, lp) for t, lp in self.generator.token_entries(out)])

    def token_logprob(self, token_id: int, logprob: float) -> S.TokenLogprob:
        text = self.tokenizer.decode([token_id])
        return S.TokenLogprob(token=text, logprob=logprob, bytes=list(text.encode()))

    async def chat(self, req: S.ChatCompletionRequest, policy: PromptPolicy):
        self.check(req)
        policy.check(req)
        self.limits.check_prompt_chars(sum(len(m.text()) for m in req.messages), "messages", self.info.max_model_len)
        prompt = await self.off_loop(policy.prompt_ids, req, lambda: self._render(req))
        max_tokens = self.max_tokens(len(prompt), req.token_limit())
        params = [self._params(req, max_tokens, i) for i in range(req.n)]
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        if req.stream:
            return chat_stream(self, req, policy, prompt, params, rid)
        outs = await asyncio.gather(*(self.generator.generate(prompt, p) for p in params))
        choices = []
        for i, out in enumerate(outs):
            message, reason = self.message(req, out)
            policy.record(req, prompt, out, message)
            choices.append(S.ChatChoice(index=i, message=message, finish_reason=reason,
                                        logprobs=self.chat_logprobs(out) if req.logprobs else None))
        return S.ChatCompletion(id=rid, model=self.info.name, choices=choices, usage=self.usage(prompt, outs))

    def usage(self, prompt: list[int] | int, outs: list[Finished]) -> S.Usage:
        n_prompt = prompt if isinstance(prompt, int) else len(prompt)
        n_out = sum(len(o.token_ids) for o in outs)
        self.metrics.tokens(n_prompt, n_out)
        return S.Usage(prompt_tokens=n_prompt, completion_tokens=n_out, total_tokens=n_prompt + n_out)

    # ------------------------------------------------------------------------------- completions

    def completion_prompts(self, req: S.CompletionRequest) -> list[list[int]]:
        """Token ids of each prompt (runs off the loop: it tokenises)."""
        p = req.prompt
        if isinstance(p, str):
            prompts = [self.tokenizer.encode(p)]
        elif p and all(isinstance(x, str) for x in p):
            prompts = [self.tokenizer.encode(x) for x in p]
        elif p and all(isinstance(x, int) for x in p):
            prompts = [list(p)]
        else:
            prompts = [list(x) for x in p]
        vocab = len(self.tokenizer)
        if not prompts or any(not ids for ids in prompts):
            raise bad_request("The prompt is empty.", "prompt", "invalid_value")
        if any(not 0 <= t < vocab for ids in prompts for t in ids):
            raise bad_request(f"Prompt token ids must lie in [0, {vocab}).", "prompt", "invalid_value")
        return prompts

    async def completion(self, req: S.CompletionRequest):
        self.check(req)
        texts = [req.prompt] if isinstance(req.prompt, str) else [x for x in req.prompt if isinstance(x, str)]
        self.limits.check_prompt_chars(max((len(t) for t in texts), default=0), "prompt", self.info.max_model_len)
        prompts = await self.off_loop(self.completion_prompts, req)
        limits = [self.max_tokens(len(ids), req.max_tokens) for ids in prompts]
        jobs = [(ids, self._params(req, limit, i)) for ids, limit in zip(prompts, limits) for i in range(req.n)]
        rid = f"cmpl-{uuid.uuid4().hex}"
        if req.stream:
            return completion_stream(self, req, jobs, rid)
        outs = await asyncio.gather(*(self.generator.generate(ids, p) for ids, p in jobs))
        choices = [S.CompletionChoice(index=i, text=o.text, finish_reason=o.finish_reason,
                                      logprobs=self.completion_logprobs(o) if req.logprobs is not None else None)
                   for i, o in enumerate(outs)]
        n_prompt = sum(len(ids) for ids, _ in jobs)
        return S.Completion(id=rid, model=self.info.name, choices=choices, usage=self.usage(n_prompt, outs))

    def completion_logprobs(self, out: Finished) -> S.CompletionLogprobs:
        entries = self.generator.token_entries(out)
        tokens = [self.tokenizer.decode([t]) for t, _ in entries]
        offsets, pos = [], 0
        for tok in tokens:
            offsets.append(pos)
            pos += len(tok)
        return S.CompletionLogprobs(tokens=tokens, token_logprobs=[lp for _, lp in entries],
                                    top_logprobs=[{tok: lp} for tok, (_, lp) in zip(tokens, entries)],
                                    text_offset=offsets)

    # ------------------------------------------------------------------------------- models

    def models(self) -> S.ModelList:
        i = self.info
        return S.ModelList(data=[S.ModelCard(id=i.name, created=i.created or int(time.time()), root=i.root,
                                             max_model_len=i.max_model_len, backend=i.backend)])
