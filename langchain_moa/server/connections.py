"""Connection hygiene for ``moa serve``: uvicorn's h11 protocol with a header deadline.

uvicorn closes a kept-alive connection that stays idle for
``timeout_keep_alive`` seconds and bounds the open connections and requests
in progress with ``limit_concurrency``, but it has no deadline for a
request's headers: a client that connects and sends nothing, or dribbles its
headers a byte at a time (slowloris), holds a connection for ever.
:class:`GuardedH11Protocol` adds that deadline and answers uvicorn's own
refusals in OpenAI's error shape instead of plain text. The body's deadline
is the app's (``ServerSettings.body_timeout``, answered with 408).

Use :func:`connection_options` for the ``uvicorn.Config`` arguments.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import h11
from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from langchain_moa.server.errors import ApiError
from langchain_moa.wire import error_body

HEADER_TIMEOUT_S = 10.0
"""Default seconds a request's headers may take to arrive."""

LIMIT_CONCURRENCY = 512
"""Default most open connections (and requests in progress) per worker."""

KEEP_ALIVE_S = 65.0
"""Default seconds an idle kept-alive connection stays open: longer than a
client's or load balancer's idle pools (often 60 s), or a pooled connection
can be reused just as the server closes it."""


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for request headers.

    * A connection whose request headers are not complete ``header_timeout``
      seconds after it opened, or after the first byte of a later request on
      a kept-alive connection, is closed.
    * Past ``limit_concurrency`` (open connections, or requests in progress,
      of this worker) a request gets 503 in OpenAI's shape, and its
      connection is closed.
    * A request that is not valid HTTP gets 400 in OpenAI's shape.

    Args:
        config: uvicorn's configuration.
        server_state: uvicorn's shared server state.
        app_state: The lifespan state.
        _loop: The event loop (uvicorn's argument).
        header_timeout: Seconds a request's headers may take to arrive.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        header_timeout: float = HEADER_TIMEOUT_S,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_timeout = header_timeout
        self._header_deadline: asyncio.TimerHandle | None = None
        self._limit = self.limit_concurrency
        self.limit_concurrency = None  # checked in _guarded, which answers in OpenAI's shape
        self._app = self.app
        self.app = self._guarded

    # -- the header deadline ---------------------------------------------------

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _start_header_deadline(self) -> None:
        self._header_deadline = self.loop.call_later(self._header_timeout, self._headers_late)

    def _stop_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self._between_requests() and not self.transport.is_closing():
            self.logger.debug("headers took over %gs: connection closed", self._header_timeout)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the deadline of the first request's headers."""
        super().connection_made(transport)
        self._start_header_deadline()

    def data_received(self, data: bytes) -> None:
        """Start the deadline at a new request's first byte; stop it once its headers are in."""
        if self._header_deadline is None and self._between_requests():
            self._start_header_deadline()
        super().data_received(data)
        if not self._between_requests():
            self._stop_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the deadline with the connection."""
        self._stop_header_deadline()
        super().connection_lost(exc)

    # -- uvicorn's refusals, in OpenAI's shape -----------------------------------

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self._limit
        if limit is not None and (len(self.connections) > limit or len(self.tasks) > limit):
            self.logger.warning("Exceeded concurrency limit.")
            message = f"this server is at its limit of {limit} connections; retry later"
            headers = {"Connection": "close", "Retry-After": "1"}
            await ApiError(503, message, headers=headers).response()(scope, receive, send)
            return
        await self._app(scope, receive, send)

    def send_400_response(self, msg: str) -> None:
        """Answer a request that is not valid HTTP, and close the connection."""
        body = json.dumps(error_body(400, msg)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def connection_options(
    *,
    limit_concurrency: int = LIMIT_CONCURRENCY,
    header_timeout: float = HEADER_TIMEOUT_S,
    keep_alive_timeout: float = KEEP_ALIVE_S,
) -> dict[str, Any]:
    """The ``uvicorn.Config`` arguments of a guarded server.

    Args:
        limit_concurrency: Most open connections (and requests in progress)
            per worker; past it, 503.
        header_timeout: Seconds a request's headers may take to arrive.
        keep_alive_timeout: Seconds an idle kept-alive connection stays open.

    Returns:
        ``http`` (:class:`GuardedH11Protocol`), ``limit_concurrency`` and
        ``timeout_keep_alive``.
    """
    return {
        "http": functools.partial(GuardedH11Protocol, header_timeout=header_timeout),
        "limit_concurrency": limit_concurrency,
        "timeout_keep_alive": keep_alive_timeout,
    }
