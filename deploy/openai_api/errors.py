"""OpenAI-style error bodies: `{"error": {"message", "type", "param", "code"}}` with a 4xx/5xx status.

Contract:
- Every failure the app answers goes through `APIError` or one of the handlers installed by
  `install_handlers`: malformed JSON, a body that is not an object, schema violations (wrong type,
  out of range, unknown field) -> 400 `invalid_request_error`; unknown model -> 404
  `model_not_found`; unknown route -> 404; wrong method -> 405; anything unexpected -> 500
  `server_error` (logged, the server keeps serving).
- FastAPI's own 422 for validation never reaches a client: it is answered as 400, like OpenAI.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
                405: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
                503: "service_unavailable"}


@dataclass
class APIError(Exception):
    status: int
    message: str
    param: str | None = None
    code: str | None = None

    def body(self) -> dict:
        kind = _ERROR_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def model_not_found(name: str) -> APIError:
    return APIError(404, f"The model `{name}` does not exist.", "model", "model_not_found")


def validation_error(exc: ValidationError | RequestValidationError) -> APIError:
    """400 naming the first offending parameter, from a pydantic validation failure."""
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "extra_forbidden":
        return bad_request(f"Unrecognized request argument supplied: {param}", param, "unrecognized_argument")
    if first.get("type") == "json_invalid":
        return bad_request(f"We could not parse the JSON body of your request: {first.get('msg')}", None, "invalid_json")
    if first.get("type") == "model_type" and not loc:
        return bad_request("The request body must be a JSON object.", None, "invalid_json")
    where = f"'{param}'" if param else "the request body"
    return bad_request(f"Invalid value for {where}: {first.get('msg')}", param, "invalid_value")


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return APIError(404, f"Unknown request URL: {request.method} {request.url.path}.", None, "unknown_url").response()
        if exc.status_code == 405:
            return APIError(405, f"Method {request.method} is not allowed for {request.url.path}.", None,
                            "method_not_allowed").response()
        return APIError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error while serving a request")
        return APIError(500, f"The server had an error while processing your request: {type(exc).__name__}",
                        None, "server_error").response()
