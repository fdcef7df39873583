"""Timeouts, layer deadlines, retries and concurrency bounds for inner model calls.

Every inner call goes through ``call_async`` (async path) or ``call_sync`` (sync
path). With a timeout or a layer deadline, the sync path runs the call as a task
on one shared background event loop and waits for it, so an abandoned call is
cancelled for real instead of leaving a thread blocked on it.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

T = TypeVar("T")

_PERMANENT_STATUS = frozenset({400, 401, 403, 404, 409, 413, 422})
_DEADLINE_POLL_S = 0.02


class ProposerTimeoutError(TimeoutError):
    """An inner call took longer than its timeout and was cancelled."""


class LayerDeadlineError(TimeoutError):
    """A straggler was cancelled at the layer deadline, the quorum being met."""


def _status(error: BaseException) -> int | None:
    for candidate in (error, getattr(error, "response", None)):
        code = getattr(candidate, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def retry_after_seconds(error: BaseException) -> float | None:
    """The server's ``Retry-After`` for ``error``, in seconds, if it sent one."""
    headers = getattr(getattr(error, "response", None), "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def is_transient(error: BaseException) -> bool:
    """Whether retrying ``error`` can help: 408, 409-free 429, 5xx, connection errors.

    Validation errors, bad requests and authentication or permission errors
    (400, 401, 403, 404, 422, ...) are permanent.
    """
    if isinstance(error, (ProposerTimeoutError, LayerDeadlineError)):
        return False
    status = _status(error)
    if status is not None:
        return status in (408, 429) or status >= 500
    names = {cls.__name__ for cls in type(error).__mro__}
    transient_names = {
        "APIConnectionError",
        "APITimeoutError",
        "TransportError",
        "RemoteProtocolError",
    }
    return bool(names & transient_names) or isinstance(error, (ConnectionError, TimeoutError))


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried.

    Attributes:
        max_retries: Retries after the first attempt (0: none).
        base_delay: First backoff in seconds; doubles each retry, with jitter.
        max_delay: Upper bound of one wait, ``Retry-After`` included.
    """

    max_retries: int = 2
    base_delay: float = 0.5
    max_delay: float = 20.0

    def delay(self, attempt: int, error: BaseException) -> float:
        """Seconds to wait before retry number ``attempt`` (from 1)."""
        hinted = retry_after_seconds(error)
        if hinted is not None:
            return min(hinted, self.max_delay)
        backoff = self.base_delay * 2 ** (attempt - 1)
        return min(backoff * random.uniform(0.5, 1.5), self.max_delay)  # noqa: S311


@dataclass
class LayerWatch:
    """Shared by the proposers of one layer in one run: start time and successes."""

    deadline: float | None
    quorum: int
    started: float = field(default_factory=time.monotonic)
    _succeeded: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def succeeded(self) -> None:
        """Count one successful proposer."""
        with self._lock:
            self._succeeded += 1

    def may_cut(self) -> bool:
        """Whether stragglers may be cancelled now: deadline passed, quorum met."""
        if self.deadline is None or time.monotonic() - self.started < self.deadline:
            return False
        with self._lock:
            return self._succeeded >= self.quorum

    def until_deadline(self) -> float | None:
        """Seconds left before the deadline (``None``: no deadline)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - (time.monotonic() - self.started))


@dataclass
class CallLimits:
    """What bounds one inner call.

    Attributes:
        retry: The retry policy.
        timeout: Seconds for the call, retries included (``None``: no limit).
        watch: The layer's deadline watch (proposers only).
        limit: The ensemble's bound on in-flight calls, held per attempt.
        attempts: Attempts made so far (set by the call helpers).
    """

    retry: RetryPolicy
    timeout: float | None = None
    watch: LayerWatch | None = None
    limit: ConcurrencyLimit | None = None
    attempts: int = 0

    @property
    def bounded(self) -> bool:
        """Whether the call needs cancellation support (timeout or deadline)."""
        return self.timeout is not None or (
            self.watch is not None and self.watch.deadline is not None
        )


async def _retrying(make_call: Callable[[], Awaitable[T]], limits: CallLimits) -> T:
    while True:
        limits.attempts += 1
        release = await limits.limit.acquire_async() if limits.limit else None
        try:
            return await make_call()
        except Exception as error:
            if limits.attempts > limits.retry.max_retries or not is_transient(error):
                raise
            delay = limits.retry.delay(limits.attempts, error)
        finally:
            if release:
                release()
        await asyncio.sleep(delay)


async def call_async(make_call: Callable[[], Awaitable[T]], limits: CallLimits) -> T:
    """Run an async call with retries, its timeout and the layer deadline.

    Raises:
        ProposerTimeoutError: The timeout passed; the call was cancelled.
        LayerDeadlineError: The layer deadline passed with the quorum met.
    """
    if not limits.bounded:
        return await _retrying(make_call, limits)
    task = asyncio.ensure_future(_retrying(make_call, limits))
    started = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_next_wait(limits, started))
            if done:
                return task.result()
            if limits.timeout is not None and time.monotonic() - started >= limits.timeout:
                msg = f"no answer within {limits.timeout:g}s"
                raise ProposerTimeoutError(msg)
            if limits.watch is not None and limits.watch.may_cut():
                msg = f"cut at the layer deadline ({limits.watch.deadline:g}s), quorum met"
                raise LayerDeadlineError(msg)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _next_wait(limits: CallLimits, started: float) -> float:
    """Seconds until the timeout or the deadline; past the deadline, a short poll."""
    waits = []
    if limits.timeout is not None:
        waits.append(limits.timeout - (time.monotonic() - started))
    if limits.watch is not None and (left := limits.watch.until_deadline()) is not None:
        waits.append(left if left > 0 else _DEADLINE_POLL_S)
    return max(0.0, min(waits))


def call_sync(
    invoke: Callable[[], T], ainvoke: Callable[[], Awaitable[T]], limits: CallLimits
) -> T:
    """Run a call on the sync path with retries, its timeout and the layer deadline.

    Without a timeout or deadline, ``invoke`` runs in the calling thread. With
    one, ``ainvoke`` runs on the shared background loop so it can be cancelled.
    """
    if limits.bounded:
        return _background_loop().run(call_async(ainvoke, limits))
    while True:
        limits.attempts += 1
        release = limits.limit.acquire_sync() if limits.limit else None
        try:
            return invoke()
        except Exception as error:
            if limits.attempts > limits.retry.max_retries or not is_transient(error):
                raise
            delay = limits.retry.delay(limits.attempts, error)
        finally:
            if release:
                release()
        time.sleep(delay)


class _BackgroundLoop:
    """One event loop on a daemon thread, shared by sync calls that need cancelling."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._loop.run_forever, name="moa-calls", daemon=True)
        thread.start()

    def run(self, coroutine: Awaitable[T]) -> T:
        """Run ``coroutine`` on the loop (in a copy of the caller's context) and wait."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)  # type: ignore[arg-type]
        return future.result()


_LOOP: _BackgroundLoop | None = None
_LOOP_LOCK = threading.Lock()


def _background_loop() -> _BackgroundLoop:
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = _BackgroundLoop()
        return _LOOP


class ConcurrencyLimit:
    """Bounds in-flight inner calls of one ensemble (threads and event loops alike)."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._threads = threading.BoundedSemaphore(limit) if limit else None
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def acquire_sync(self) -> Callable[[], Any]:
        """Wait for a slot in a thread; returns the release function."""
        if self._threads is None:
            return lambda: None
        self._threads.acquire()
        return self._threads.release

    async def acquire_async(self) -> Callable[[], Any]:
        """Wait for a slot in the running event loop; returns the release function."""
        if not self._limit:
            return lambda: None
        loop = asyncio.get_running_loop()
        with self._lock:
            semaphore = self._loops.setdefault(loop, asyncio.Semaphore(self._limit))
        await semaphore.acquire()
        return semaphore.release
