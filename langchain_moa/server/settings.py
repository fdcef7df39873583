"""The server's limits and switches."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSettings:
    """Limits and switches of the OpenAI-compatible server.

    Attributes:
        max_body_bytes: Largest request body accepted; a larger one gets 413.
        max_messages: Most messages one request may carry; more get 413.
        max_concurrency_per_key: Requests in progress at once per API key (all
            callers share one budget when the server has no keys); one more
            gets 429 with ``Retry-After``.
        request_timeout: Seconds one request's ensemble run may take before it
            is cancelled and answered with 504 (``None``: no limit).
        body_timeout: Seconds a request's body may take to arrive once its
            headers did; a slower one gets 408 and its connection is closed
            (``None``: no limit).
        include_moa_details: Add the ``moa`` extension field (every proposal,
            the aggregator's call, failures) to each response.
        expose_upstream: Let the addresses of the upstream providers (URLs,
            ``host:port``) through in responses (``moa`` details, error
            messages); by default each is replaced with ``[upstream]``.
        retry_after_s: Seconds a 429 answer asks the client to wait.
        owned_by: ``owned_by`` of the models that ``GET /v1/models`` lists.
    """

    max_body_bytes: int = 8 * 1024 * 1024
    max_messages: int = 1000
    max_concurrency_per_key: int = 32
    request_timeout: float | None = 600.0
    body_timeout: float | None = 30.0
    include_moa_details: bool = True
    expose_upstream: bool = False
    retry_after_s: int = 1
    owned_by: str = "langchain-moa"

    def __post_init__(self) -> None:
        """Refuse limits that cannot work.

        Raises:
            ValueError: A limit below 1, or a timeout that is not a positive
                finite number.
        """
        for name in ("max_body_bytes", "max_messages", "max_concurrency_per_key", "retry_after_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"{name} must be an integer >= 1, got {value!r}"
                raise ValueError(msg)
        for name in ("request_timeout", "body_timeout"):
            timeout = getattr(self, name)
            if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
                msg = f"{name} must be a positive number of seconds, got {timeout!r}"
                raise ValueError(msg)
