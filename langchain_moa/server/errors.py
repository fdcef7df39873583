"""Errors as OpenAI-style answers with honest HTTP statuses."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from langchain_moa.errors import (
    AggregatorFailedError,
    MoAError,
    ProposersFailedError,
    ProviderError,
    describe_error,
    redact,
)
from langchain_moa.server.upstream import hide_upstream
from langchain_moa.wire import error_body

logger = logging.getLogger("langchain_moa.server")

TIMEOUT_ERRORS = frozenset(
    {
        "AggregatorTimeoutError",
        "ProposerTimeoutError",
        "CallTimeoutError",
        "LayerDeadlineError",
        "APITimeoutError",
        "TimeoutError",
        "ReadTimeout",
        "ConnectTimeout",
        "WriteTimeout",
        "PoolTimeout",
    }
)
"""Names of the error types that mean an upstream call ran out of time."""


class ApiError(Exception):
    """An answer other than success: status, OpenAI error body and headers.

    Attributes:
        status: The HTTP status.
        message: The error's message (already masked).
        param: The request field at fault, if any.
        code: The error ``code`` (default: chosen after the status).
        headers: Extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        """The OpenAI-style error body."""
        return error_body(self.status, self.message, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        """The answer: the body as JSON, with the status and headers."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class RequestTimeoutError(Exception):
    """The server's own deadline for one request passed."""


def _is_timeout(error_text: str | None) -> bool:
    name = (error_text or "").split(":", 1)[0].strip()
    return name in TIMEOUT_ERRORS


def _cause_text(error: BaseException) -> str | None:
    cause = error.__cause__
    if isinstance(cause, ProviderError):
        return cause.type_name
    return type(cause).__name__ if cause is not None else None


def upstream_error(
    error: BaseException, timeout: float | None = None, *, expose_upstream: bool = False
) -> ApiError:
    """The answer for an ensemble run that failed.

    * 504 when the server's deadline passed, or every cause was a timeout.
    * 502 when proposers or the aggregator failed upstream otherwise; the
      message carries the causes, secrets masked.
    * 500 for anything else, naming only the error's type.

    Args:
        error: What the run raised.
        timeout: The server's deadline, for the message.
        expose_upstream: Keep upstream addresses in the message (by default
            each is replaced, see :mod:`langchain_moa.server.upstream`).

    Returns:
        The error to answer with.
    """
    answer = _run_error(error, timeout)
    if not expose_upstream:
        answer.message = hide_upstream(answer.message)
    return answer


def _run_error(error: BaseException, timeout: float | None) -> ApiError:
    if isinstance(error, RequestTimeoutError):
        return ApiError(504, f"the ensemble did not answer within {timeout:g} s", code="timeout")
    if isinstance(error, ProposersFailedError):
        timed_out = bool(error.failures) and all(_is_timeout(p.error) for p in error.failures)
        status = 504 if timed_out else 502
        return ApiError(status, redact(f"proposers failed upstream: {error}"))
    if isinstance(error, AggregatorFailedError):
        status = 504 if _is_timeout(_cause_text(error)) else 502
        return ApiError(status, redact(f"the aggregator failed upstream: {error}"))
    if isinstance(error, MoAError):
        return ApiError(502, redact(f"the ensemble failed upstream: {error}"))
    return _internal(error)


def _internal(error: BaseException) -> ApiError:
    return ApiError(500, f"internal error ({type(error).__name__}); see the server's log")


def internal_error(error: BaseException) -> ApiError:
    """Log an unexpected error once (masked, with where it was raised) and answer 500."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    logger.error("500: %s%s", describe_error(error), where)
    return _internal(error)


class InternalErrors:
    """ASGI middleware: an unexpected exception becomes OpenAI's JSON 500.

    Starlette would answer a plain-text 500 and hand the exception on, for the
    ASGI server to log its traceback (messages unmasked). Here it is logged
    once by :func:`internal_error` and answered in OpenAI's shape; if the
    response had started, the connection is left to close.

    Args:
        app: The ASGI app to guard.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; answer 500 for what it raises."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as error:
            answer = internal_error(error)
            if not started:
                await answer.response()(scope, receive, send)
