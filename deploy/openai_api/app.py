"""The FastAPI app: routes of the OpenAI API over an `OpenAIService`.

Routes: GET /health, GET /metrics, GET /v1/models, POST /v1/completions, POST /v1/chat/completions.
`create_app(..., prefixes=["", "/sessions/{session_id}"])` mounts the same routes under each prefix
(the training gateway identifies sessions by that path parameter or by the X-KPop-Session header).

Contract:
- A body over the service's `limits.max_body_bytes` is answered 413 by `BodyLimitMiddleware` before
  any route runs (limits.py); /health reports the limits.
- Bodies are parsed here from raw bytes with the strict schemas, on the service's preparation threads
  (a large body does not stall the event loop), so malformed JSON, wrong types and unknown fields
  are 400s with OpenAI error bodies (errors.py), never FastAPI's 422.
- The service is read from `app.state.service` at request time, so it may be built in the
  lifespan (vLLM must be built on the loop that serves it); until it exists every route but
  /health answers 503.
- `policy_for(request)` picks the PromptPolicy of a chat request (default: stateless).
- Every response, streamed or not, error or not, is counted once in the metrics when it ends.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from kpop.deploy.openai_api import schemas as S
from kpop.deploy.openai_api.errors import APIError, install_handlers, validation_error
from kpop.deploy.openai_api.limits import BodyLimitMiddleware
from kpop.deploy.openai_api.service import OpenAIService, PromptPolicy, StatelessPolicy

SESSION_HEADER = "x-kpop-session"


def _service(request: Request) -> OpenAIService:
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise APIError(503, "The model is still loading; retry shortly.", None, "model_loading")
    return service


async def _parse(request: Request, service: OpenAIService, model: type[S.BaseModel]):
    raw = await request.body()
    try:
        return await service.off_loop(model.model_validate_json, raw or b"")
    except ValidationError as exc:
        raise validation_error(exc) from None


def _respond(result) -> Response:
    if isinstance(result, AsyncIterator):
        return StreamingResponse(result, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    return JSONResponse(result.model_dump(mode="json", exclude_none=False))


def session_id(request: Request) -> str | None:
    return request.path_params.get("session_id") or request.headers.get(SESSION_HEADER)


def openai_router() -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health(request: Request) -> JSONResponse:
        service = getattr(request.app.state, "service", None)
        if service is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        load = service.engine.load()
        return JSONResponse({"status": "ok", "model": service.info.name, "backend": service.info.backend,
                             "version": load.version, "running": load.running, "waiting": load.waiting,
                             "limits": dataclasses.asdict(service.limits)})

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        service = _service(request)
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @router.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        return JSONResponse(_service(request).models().model_dump())

    @router.post("/v1/completions")
    async def completions(request: Request) -> Response:
        service = _service(request)
        req = await _parse(request, service, S.CompletionRequest)
        return _respond(await service.completion(req))

    @router.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        service = _service(request)
        req = await _parse(request, service, S.ChatCompletionRequest)
        policy = request.app.state.policy_for(request)
        return _respond(await service.chat(req, policy))

    return router


def _install_metrics(app: FastAPI) -> None:
    @app.middleware("http")
    async def observe(request: Request, call_next):
        service = getattr(request.app.state, "service", None)
        if service is None:
            return await call_next(request)
        metrics, start = service.metrics, time.perf_counter()
        metrics.in_flight.inc()

        def done(status: int) -> None:
            metrics.in_flight.dec()
            route = request.scope.get("route")
            metrics.observe(getattr(route, "path", "unmatched"), status, time.perf_counter() - start)

        try:
            response = await call_next(request)
        except Exception:
            done(500)
            raise
        body = response.body_iterator

        async def counted():
            try:
                async for chunk in body:
                    yield chunk
            finally:
                done(response.status_code)

        response.body_iterator = counted()
        return response


def create_app(service: OpenAIService | None = None, *,
               policy_for: Callable[[Request], PromptPolicy] | None = None,
               prefixes: list[str] | None = None,
               lifespan: Callable[[FastAPI], AbstractAsyncContextManager[Any]] | None = None,
               title: str = "KPop OpenAI-compatible server") -> FastAPI:
    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    stateless = StatelessPolicy()
    app.state.policy_for = policy_for or (lambda _request: stateless)
    install_handlers(app)
    app.add_middleware(BodyLimitMiddleware)  # added before the metrics middleware: inside it, so 413s are counted
    _install_metrics(app)
    router = openai_router()
    for prefix in prefixes or [""]:
        app.include_router(router, prefix=prefix)
    return app


@asynccontextmanager
async def serving(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `app` on the current event loop; yields the base URL (port 0: a free port)."""
    import asyncio

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError(f"the server did not start on {host}:{port}")
        await asyncio.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        await task
