"""Cheap limits first: a request is bounded by size before anything expensive touches it.

Two bounds, both checked before any JSON parsing, template rendering or tokenisation:
- `max_body_bytes`: a body longer than this is answered 413 `request_too_large` by
  `BodyLimitMiddleware` as soon as its Content-Length is seen (or, for a chunked body, as soon as the
  bytes read pass the bound); the body is never buffered beyond the bound. The rest of an oversized
  body is discarded by the HTTP server (uvicorn keeps reading and dropping it), so the client reads
  the 413 instead of a reset connection.
- `max_prompt_chars`: a prompt (the characters of a chat request's messages, or of one completion
  prompt string) longer than this is answered 400 `context_length_exceeded` after parsing, before
  rendering and tokenisation.

Defaults derive from the model (`default_limits`): no token of the vocabulary is longer than
`longest_token_chars` characters, so a prompt of more than `max_model_len * longest_token_chars`
characters needs more than `max_model_len` tokens and could never be served: the default rejects
only prompts that tokenisation would reject anyway (assuming the chat template keeps the messages'
text and the tokenizer's normaliser drops no characters, true of byte-level BPE and SentencePiece).
The default body bound allows such a prompt JSON-escaped (`\\uXXXX`: 6 bytes a character) plus 1 MiB
for the rest of the request (tools, sampling fields, batch framing).

Invariant: the middleware answers without calling the app, so an oversized request costs O(1)
event-loop work whatever its size.
"""

from __future__ import annotations

from dataclasses import dataclass

from kpop.deploy.openai_api.errors import APIError, bad_request

JSON_BYTES_PER_CHAR = 6
BODY_OVERHEAD_BYTES = 1 << 20
_BODY_METHODS = {"POST", "PUT", "PATCH"}


@dataclass(frozen=True)
class RequestLimits:
    max_body_bytes: int
    max_prompt_chars: int

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_prompt_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")

    def check_prompt_chars(self, chars: int, param: str, max_model_len: int) -> None:
        if chars > self.max_prompt_chars:
            raise bad_request(
                f"This model's maximum context length is {max_model_len} tokens and this server accepts prompts "
                f"of at most {self.max_prompt_chars} characters; your {param} have {chars} characters. Please "
                f"reduce the length of the {param}.", param, "context_length_exceeded")


def longest_token_chars(tokenizer) -> int:
    """Characters of the longest vocabulary entry (added and special tokens included)."""
    return max((len(token) for token in tokenizer.get_vocab()), default=1)


def default_limits(tokenizer, max_model_len: int) -> RequestLimits:
    chars = max_model_len * longest_token_chars(tokenizer)
    return RequestLimits(max_body_bytes=BODY_OVERHEAD_BYTES + JSON_BYTES_PER_CHAR * chars, max_prompt_chars=chars)


def resolve_limits(tokenizer, max_model_len: int, max_body_bytes: int | None = None,
                   max_prompt_chars: int | None = None) -> RequestLimits:
    """The defaults of `default_limits`, with any bound given explicitly replacing its default."""
    base = default_limits(tokenizer, max_model_len)
    return RequestLimits(max_body_bytes=base.max_body_bytes if max_body_bytes is None else max_body_bytes,
                         max_prompt_chars=base.max_prompt_chars if max_prompt_chars is None else max_prompt_chars)


def too_large(size: int | str, limit: int) -> APIError:
    return APIError(413, f"The request body is {size} bytes; this server accepts at most {limit} bytes. "
                         "Send a shorter prompt.", None, "request_too_large")


class BodyLimitMiddleware:
    """ASGI middleware: bodies above the service's `limits.max_body_bytes` get 413 without reaching the app.

    The bound is read at request time from `app.state.service.limits` (the service may be built in
    the lifespan); while there is no service, requests pass through untouched. A body within the
    bound is read here and replayed to the app in one message.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        service = getattr(scope.get("app").state, "service", None) if scope.get("app") is not None else None
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS or service is None:
            return await self.app(scope, receive, send)
        limit = service.limits.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            return await too_large(declared, limit).response()(scope, receive, send)
        body, size = bytearray(), 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await too_large(f"more than {limit}", limit).response()(scope, receive, send)
            body += chunk
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay

