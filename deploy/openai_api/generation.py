"""Token ids in, text out: one choice generated through any `Engine`, with stop strings and log-probs.

Contract:
- The engine sees token ids only; stop strings are passed to it (it may stop early) AND enforced
  here on the decoded text, so an engine that ignores them still answers correctly. The returned
  text excludes the stop string (OpenAI semantics); `token_ids` keep everything the engine produced
  (a recorder needs exactly that).
- The EOS token is always a stop token; special tokens are not part of the text or of the
  log-prob entries.
- Streaming holds back text that could be the start of a stop string or an incomplete UTF-8
  character, so no chunk ever carries text that a later chunk would retract.
- A stream closed early (stop string found, client gone) aborts the engine request.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from kpop.rollout.engine import Engine, GenerationRequest, SamplingParams


@dataclass
class Finished:
    """One generated choice."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Piece:
    """A streamed part of a choice: new text, and the (token id, log-prob) pairs it came from."""

    text: str
    tokens: list[tuple[int, float]]


class TextTracker:
    """Incremental detokenisation with stop-string detection and hold-back."""

    def __init__(self, tokenizer, stops: list[str]) -> None:
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.emitted = 0
        self.final: str | None = None  # set once a stop string is found

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def push(self, token_ids: list[int]) -> str:
        """Add tokens; return the text that is now safe to emit."""
        self.ids += token_ids
        text = self._text()
        start = max(0, self.emitted - max((len(s) for s in self.stops), default=0))
        hits = [p for p in (text.find(s, start) for s in self.stops) if p >= 0]
        if hits:
            self.final = text[: min(hits)]
            return self._emit(self.final, len(self.final))
        safe = len(text)
        if text.endswith("\ufffd"):
            safe -= 1
        hold = max((k for s in self.stops for k in range(1, len(s)) if text[:safe].endswith(s[:k])), default=0)
        return self._emit(text, safe - hold)

    def _emit(self, text: str, upto: int) -> str:
        piece = text[self.emitted:upto] if upto > self.emitted else ""
        self.emitted = max(self.emitted, upto)
        return piece

    def flush(self) -> str:
        """The rest of the text at the end of generation."""
        text = self.final if self.final is not None else self._text()
        return self._emit(text, len(text))

    def text(self) -> str:
        return self.final if self.final is not None else self._text()


class Generator:
    def __init__(self, engine: Engine, tokenizer) -> None:
        self.engine, self.tokenizer = engine, tokenizer
        self.eos_ids = sorted({i for i in [tokenizer.eos_token_id] if i is not None})
        self.special_ids = set(tokenizer.all_special_ids)

    def sampling(self, temperature: float | None, top_p: float | None, max_tokens: int, stops: list[str],
                 seed: int | None) -> SamplingParams:
        return SamplingParams(temperature=1.0 if temperature is None else temperature,
                              top_p=1.0 if top_p is None else top_p, max_tokens=max_tokens,
                              stop_token_ids=list(self.eos_ids), stop=list(stops), seed=seed)

    def _request(self, prompt_ids: list[int], params: SamplingParams) -> GenerationRequest:
        return GenerationRequest(f"kpop-{uuid.uuid4().hex}", list(prompt_ids), params)

    def _finish_reason(self, out: Finished, tracker: TextTracker, params: SamplingParams, engine_reason: str) -> str:
        if tracker.final is not None or engine_reason == "abort":
            return "stop" if tracker.final is not None else "abort"
        if out.token_ids and out.token_ids[-1] in params.stop_token_ids:
            return "stop"
        return "length" if len(out.token_ids) >= params.max_tokens else engine_reason

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Finished:
        result = await self.engine.generate(self._request(prompt_ids, params))
        tracker = TextTracker(self.tokenizer, params.stop)
        tracker.push(result.token_ids)
        out = Finished(list(result.token_ids), list(result.logprobs), list(result.versions), tracker.text())
        out.finish_reason = self._finish_reason(out, tracker, params, result.finish_reason)
        return out

    async def stream(self, prompt_ids: list[int], params: SamplingParams, out: Finished) -> AsyncIterator[Piece]:
        """Yield pieces; `out` is filled in as tokens arrive and is complete when the stream ends."""
        request = self._request(prompt_ids, params)
        tracker = TextTracker(self.tokenizer, params.stop)
        done = False
        async with contextlib.aclosing(self.engine.stream(request)) as deltas:
            try:
                async for delta in deltas:
                    out.token_ids += delta.token_ids
                    out.logprobs += delta.logprobs
                    out.versions += delta.versions
                    text = tracker.push(delta.token_ids)
                    pairs = [(t, lp) for t, lp in zip(delta.token_ids, delta.logprobs) if t not in self.special_ids]
                    if text or pairs:
                        yield Piece(text, pairs)
                    if tracker.final is not None:
                        break
                done = True
            finally:
                if not done or tracker.final is not None:
                    await self.engine.abort(request.request_id)
        rest = tracker.flush()
        if rest:
            yield Piece(rest, [])
        out.text = tracker.text()
        out.finish_reason = self._finish_reason(out, tracker, params, "stop")

    def token_entries(self, out: Finished) -> list[tuple[int, float]]:
        """(token id, log-prob) of the tokens that make up `out.text` (special tokens dropped)."""
        pairs = [(t, lp) for t, lp in zip(out.token_ids, out.logprobs) if t not in self.special_ids]
        if self.tokenizer.decode([t for t, _ in pairs], skip_special_tokens=True) == out.text:
            return pairs
        kept, ids = [], []
        for t, lp in pairs:
            if ids and len(self.tokenizer.decode(ids, skip_special_tokens=True)) >= len(out.text):
                break
            ids.append(t)
            kept.append((t, lp))
        return kept
