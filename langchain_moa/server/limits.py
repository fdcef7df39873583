"""Request limits: body size and read time, and per-caller concurrency."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from starlette.requests import Request

from langchain_moa.server.errors import ApiError


class CallerSlots:
    """Requests in progress per caller, refused beyond a limit (never queued).

    Single-threaded: used from the server's event loop only.

    Args:
        limit: Most requests one caller may have in progress.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._busy: Counter[str] = Counter()

    def try_acquire(self, caller: str) -> Callable[[], None] | None:
        """Take a slot for ``caller``.

        Returns:
            The function that gives the slot back (calling it again does
            nothing), or ``None`` when ``caller`` has no slot left.
        """
        if self._busy[caller] >= self.limit:
            return None
        self._busy[caller] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._busy[caller] -= 1
                if self._busy[caller] <= 0:
                    del self._busy[caller]

        return release

    def busy(self, caller: str) -> int:
        """Requests ``caller`` has in progress."""
        return self._busy[caller]


def too_large(what: str, limit: int, param: str | None = None) -> ApiError:
    """The 413 answer for a request over a limit."""
    return ApiError(
        413, f"{what} exceeds this server's limit of {limit}", param=param, code="request_too_large"
    )


async def read_body(request: Request, max_bytes: int, timeout: float | None = None) -> bytes:
    """Read a request body of at most ``max_bytes``, without holding more.

    Args:
        request: The request.
        max_bytes: The limit.
        timeout: Seconds the whole body may take to arrive (``None``: no limit).

    Returns:
        The body.

    Raises:
        ApiError: 413 as soon as the declared or received length passes the
            limit; 400 for a malformed ``Content-Length``; 408 (and the
            connection closed) when the body did not arrive in time.
    """
    try:
        return await asyncio.wait_for(_read_body(request, max_bytes), timeout)
    except asyncio.TimeoutError:
        message = f"the request body did not arrive within {timeout:g} s"
        raise ApiError(408, message, code="timeout", headers={"Connection": "close"}) from None


async def _read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ApiError(400, "malformed Content-Length header") from None
        if length > max_bytes:
            raise too_large("the request body", max_bytes)
    parts: list[bytes] = []
    received = 0
    async for part in request.stream():
        received += len(part)
        if received > max_bytes:
            raise too_large("the request body", max_bytes)
        parts.append(part)
    return b"".join(parts)
