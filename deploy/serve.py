"""`kpop serve CHECKPOINT`: a checkpoint folder behind the OpenAI-compatible app.

Contract:
- The backend is chosen from the checkpoint (openai_api.backends.choose_backend) unless forced.
- The engine is built inside the server's lifespan, on the event loop that serves requests (vLLM
  binds to the loop that first drives it); /health answers 503 "loading" until then and 200 after.
- The server binds `host` (loopback by default) and stops cleanly on SIGINT/SIGTERM, shutting the
  engine down (vLLM's engine-core process included).
- The served model name defaults to the checkpoint folder's name as given (e.g. "last").
- Request limits (openai_api.limits): `max_body_bytes` and `max_prompt_chars` default to bounds
  derived from the served context length and the tokenizer's longest token; a value given replaces
  its default.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from kpop.deploy.openai_api.app import create_app
from kpop.deploy.openai_api.backends import (
    BackendChoice,
    EngineOptions,
    build_engine,
    choose_backend,
    max_model_len,
)
from kpop.deploy.openai_api.limits import resolve_limits
from kpop.deploy.openai_api.service import ModelInfo, OpenAIService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    checkpoint: str
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    backend: str = "auto"  # auto | vllm | builtin
    kv_cache_gib: float = 0.25
    max_model_len: int | None = None
    seed: int = 0
    max_num_seqs: int = 128
    log_level: str = "warning"
    max_body_bytes: int | None = None  # None: derived from the context length (limits.default_limits)
    max_prompt_chars: int | None = None


def resolve_backend(config: ServeConfig) -> BackendChoice:
    if config.backend == "auto":
        return choose_backend(Path(config.checkpoint))
    return BackendChoice(config.backend, "forced with --backend")  # type: ignore[arg-type]


def build_service(config: ServeConfig) -> OpenAIService:
    """Load tokenizer and engine (blocking) and wrap them in the service."""
    from transformers import AutoTokenizer

    folder = Path(config.checkpoint)
    choice = resolve_backend(config)
    options = EngineOptions(kv_cache_gib=config.kv_cache_gib, max_model_len=config.max_model_len, seed=config.seed,
                            max_num_seqs=config.max_num_seqs)
    log.warning("serving %s with the %s backend (%s)", folder, choice.kind, choice.reason)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    engine = build_engine(folder, choice, options)
    info = ModelInfo(name=config.served_model_name or folder.name, root=str(folder.resolve()),
                     max_model_len=max_model_len(folder, options), backend=choice.kind, created=int(time.time()))
    limits = resolve_limits(tokenizer, info.max_model_len, config.max_body_bytes, config.max_prompt_chars)
    log.warning("request limits: body %d bytes, prompt %d characters", limits.max_body_bytes, limits.max_prompt_chars)
    return OpenAIService(engine, tokenizer, info, limits)


def make_app(config: ServeConfig):
    @asynccontextmanager
    async def lifespan(app):
        app.state.service = build_service(config)
        try:
            yield
        finally:
            service, app.state.service = app.state.service, None
            service.close()
            close = getattr(service.engine, "close", None)
            done = close() if close is not None else None
            if inspect.isawaitable(done):  # the built-in engine closes asynchronously
                await done

    return create_app(lifespan=lifespan)


def serve(config: ServeConfig) -> None:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(make_app(config), host=config.host, port=config.port,
                                           log_level=config.log_level, access_log=False, lifespan="on"))
    asyncio.run(server.serve())
