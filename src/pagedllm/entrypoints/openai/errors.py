"""OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`, on every non-2xx answer."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pagedllm.engine.core_client import EngineDeadError
from pagedllm.engine.input_processor import EngineOverloadedError, InvalidRequestError
from pagedllm.entrypoints.chat_utils import ChatTemplateError
from pagedllm.sampling_params import SamplingParamsError
from pagedllm.structured_outputs_params import StructuredOutputsError

logger = logging.getLogger(__name__)

# What a 429 asks a client to wait before retrying (seconds): long enough for a step or two of
# a busy engine to free seats, short enough not to idle a client that could be served.
RETRY_AFTER_S = 1

# The error `type` OpenAI uses for each status we answer with.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    500: "server_error",
    503: "server_error",
}


class OpenAIError(Exception):
    """An error answered with `status` and OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": _ERROR_TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class ServerShuttingDownError(RuntimeError):
    """A request the server ended because it is shutting down (lifecycle.py)."""


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def to_openai_error(exc: BaseException) -> OpenAIError:
    """Map anything a request can raise to the answer the client gets."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, EngineOverloadedError):
        return OpenAIError(
            429, str(exc), code="engine_overloaded", headers={"Retry-After": str(RETRY_AFTER_S)}
        )
    if isinstance(
        exc, InvalidRequestError | SamplingParamsError | ChatTemplateError | StructuredOutputsError
    ):
        return bad_request(str(exc), param=getattr(exc, "param", None))
    if isinstance(exc, EngineDeadError):
        return OpenAIError(503, str(exc), code="engine_dead")
    if isinstance(exc, ServerShuttingDownError):
        return OpenAIError(503, str(exc), code="server_shutting_down")
    logger.error("unexpected error while serving a request", exc_info=exc)
    return OpenAIError(500, f"internal server error: {type(exc).__name__}: {exc}", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app or the framework raises leaves as an OpenAI error body."""

    async def on_openai_error(_: Request, exc: Exception) -> JSONResponse:
        return to_openai_error(exc).response()

    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        phrase = (
            HTTPStatus(exc.status_code).phrase if exc.status_code in HTTPStatus._value2member_map_ else ""
        )
        message = f"{phrase}: {request.method} {request.url.path}" if phrase else str(exc.detail)
        headers = exc.headers or {}
        if "Allow" in headers:
            message += f"; this path allows {headers['Allow']}"
        code = phrase.lower().replace(" ", "_") or None
        response = OpenAIError(exc.status_code, message, code=code).response()
        # Starlette's 405 carries the Allow header a client needs (RFC 9110 requires it).
        response.headers.update(headers)
        return response

    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "path", "query"))
        return bad_request(
            f"{param or 'request'}: {first.get('msg', 'invalid request')}", param or None
        ).response()

    for exc_type in (
        OpenAIError,
        InvalidRequestError,
        SamplingParamsError,
        ChatTemplateError,
        StructuredOutputsError,
        EngineDeadError,
    ):
        app.add_exception_handler(exc_type, on_openai_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_openai_error)
