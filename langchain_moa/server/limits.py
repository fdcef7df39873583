"""Request limits: body size and per-caller concurrency."""

from __future__ import annotations

from collections import Counter

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

    def try_acquire(self, caller: str) -> bool:
        """Take a slot for ``caller``; ``False`` when it has none left."""
        if self._busy[caller] >= self.limit:
            return False
        self._busy[caller] += 1
        return True

    def release(self, caller: str) -> None:
        """Give back a slot taken with :meth:`try_acquire`."""
        self._busy[caller] -= 1
        if self._busy[caller] <= 0:
            del self._busy[caller]

    def busy(self, caller: str) -> int:
        """Requests ``caller`` has in progress."""
        return self._busy[caller]


def too_large(what: str, limit: int, param: str | None = None) -> ApiError:
    """The 413 answer for a request over a limit."""
    return ApiError(
        413, f"{what} exceeds this server's limit of {limit}", param=param, code="request_too_large"
    )


async def read_body(request: Request, max_bytes: int) -> bytes:
    """Read a request body of at most ``max_bytes``, without holding more.

    Args:
        request: The request.
        max_bytes: The limit.

    Returns:
        The body.

    Raises:
        ApiError: 413 as soon as the declared or received length passes the
            limit; 400 for a malformed ``Content-Length``.
    """
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
