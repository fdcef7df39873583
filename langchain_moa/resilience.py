"""Timeouts, layer deadlines, retries and the concurrency bound of inner model calls.

Every inner call, streamed or not, goes through :func:`call_async`. The async
path awaits it on the caller's event loop; the sync path (:func:`call_sync`)
runs it on one shared background event loop and waits, so that a call that
times out, is cut at a layer deadline, or whose caller went away (a closed
stream, Ctrl-C) is cancelled for real instead of leaving a thread blocked on it.
Models that cannot run on that loop without sharing an HTTP client with the
caller's loops run in a worker thread instead (see ``calls``).

A forked child starts a background loop of its own and forgets the slots and
locks of its parent's calls (see ``forking``).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from langchain_moa.forking import after_fork_in_child, orphan

T = TypeVar("T")

_DEADLINE_POLL_S = 0.02
_CANCEL_POLL_S = 0.05
_IDLE_POLL_S = 0.1
_WATCH_MAX_AGE_S = 3600.0


class CallTimeoutError(TimeoutError):
    """An inner call took longer than its timeout and was cancelled."""


class ProposerTimeoutError(CallTimeoutError):
    """A proposer call took longer than ``proposer_timeout`` and was cancelled."""


class AggregatorTimeoutError(CallTimeoutError):
    """The aggregator took longer than its timeout (or first-token timeout)."""


class LayerDeadlineError(TimeoutError):
    """A straggler was cancelled at the layer deadline, the quorum being met."""


class RunCancelledError(Exception):
    """The caller went away (closed the stream, interrupted): the call was cancelled."""


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
    if value is None:
        value = getattr(error, "retry_after", None)
    if not value:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def is_transient(error: BaseException) -> bool:
    """Whether retrying ``error`` can help: 408, 429, 5xx and connection errors.

    Validation errors, bad requests and authentication or permission errors
    (400, 401, 403, 404, 422, ...) are permanent, and so are timeouts of the
    ensemble's own (a retry would only exceed them again).
    """
    if isinstance(error, (CallTimeoutError, LayerDeadlineError, RunCancelledError)):
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

    def count_success(self) -> None:
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


class LayerWatches:
    """The live watches of running layers, by layer-run id (graph state holds the id).

    Graph state is copied between nodes (and may be checkpointed), so the
    shared, mutable watch lives here; a watch whose layer never finished (a
    cancelled run) is dropped after an hour.
    """

    def __init__(self) -> None:
        self._watches: dict[str, LayerWatch] = {}
        self._lock = threading.Lock()

    def open(self, key: str, deadline: float | None, quorum: int) -> None:
        """Start the watch of one layer run."""
        now = time.monotonic()
        with self._lock:
            stale = [k for k, w in self._watches.items() if now - w.started > _WATCH_MAX_AGE_S]
            for old in stale:
                del self._watches[old]
            self._watches[key] = LayerWatch(deadline, quorum)

    def get(self, key: str | None) -> LayerWatch | None:
        """The watch of a layer run, if it is open."""
        with self._lock:
            return self._watches.get(key) if key else None

    def close(self, key: str | None) -> None:
        """Forget the watch of a finished layer run."""
        with self._lock:
            self._watches.pop(key or "", None)


LAYER_WATCHES = LayerWatches()
"""The process's layer watches."""


class ConcurrencyLimit:
    """One bound on in-flight inner calls, shared by every thread and event loop.

    Slots are handed to waiters in arrival order, across loops and threads.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._forget_calls()
        _LIMITS.add(self)

    def _forget_calls(self) -> None:
        """No slot in use, no waiter (new, and in a forked child: the parent's calls are not)."""
        self._in_use = 0
        self._waiters: deque[Callable[[], bool]] = deque()
        self._lock = threading.Lock()

    def _take_or_wait(self, grant: Callable[[], bool]) -> bool:
        with self._lock:
            if self._in_use < self.limit and not self._waiters:
                self._in_use += 1
                return True
            self._waiters.append(grant)
            return False

    def release(self) -> None:
        """Free a slot: hand it to the next live waiter, or return it."""
        with self._lock:
            while self._waiters:
                if self._waiters.popleft()():
                    return
            self._in_use -= 1

    def _withdraw(self, grant: Callable[[], bool]) -> bool:
        """Remove a waiter that gives up; False if it was already granted a slot."""
        with self._lock:
            try:
                self._waiters.remove(grant)
            except ValueError:
                return False
            return True

    async def acquire(self) -> None:
        """Wait for a slot in the running event loop."""
        loop = asyncio.get_running_loop()
        granted: asyncio.Future[None] = loop.create_future()
        handed = threading.Event()

        def grant() -> bool:
            if loop.is_closed():
                return False
            handed.set()
            loop.call_soon_threadsafe(_settle, granted)
            return True

        if self._take_or_wait(grant):
            return
        try:
            await granted
        except asyncio.CancelledError:
            if not self._withdraw(grant) and handed.is_set():
                self.release()
            raise

    def acquire_sync(self) -> None:
        """Wait for a slot in a thread."""
        event = threading.Event()

        def grant() -> bool:
            event.set()
            return True

        if not self._take_or_wait(grant):
            event.wait()


_LIMITS: weakref.WeakSet[ConcurrencyLimit] = weakref.WeakSet()
"""Every live concurrency limit, for a forked child to free their slots."""


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass
class CallLimits:
    """What bounds one inner call.

    Times are counted from when the call's first attempt got a concurrency
    slot, i.e. when its request was sent, not while it waited for one.

    Attributes:
        retry: The retry policy.
        timeout: Seconds for the call, retries included (``None``: no limit).
        first_token_timeout: Seconds until a streamed call's first content.
        timeout_error: The error raised when a timeout passes.
        watch: The layer's deadline watch (proposers only).
        limit: The ensemble's bound on in-flight calls, held per attempt.
        cancelled: Set when the caller went away; the call is then cancelled.
        first_token: Set by a streamed call when its first content arrives.
        attempts: Attempts made so far (set by the call helpers).
        sent: Set when the first attempt got its slot and its request went out.
    """

    retry: RetryPolicy
    timeout: float | None = None
    first_token_timeout: float | None = None
    timeout_error: type[CallTimeoutError] = ProposerTimeoutError
    watch: LayerWatch | None = None
    limit: ConcurrencyLimit | None = None
    cancelled: threading.Event | None = None
    first_token: threading.Event = field(default_factory=threading.Event)
    attempts: int = 0
    sent: threading.Event = field(default_factory=threading.Event)

    @property
    def bounded(self) -> bool:
        """Whether the call must be watched (a timeout or a deadline)."""
        deadline = self.watch is not None and self.watch.deadline is not None
        return self.timeout is not None or self.first_token_timeout is not None or deadline

    def verdict(self, started: float | None) -> BaseException | None:
        """The error that ends the call now, if any (``started``: when it was sent)."""
        if self.cancelled is not None and self.cancelled.is_set():
            return RunCancelledError("the caller went away; the call was cancelled")
        if started is not None:
            elapsed = time.monotonic() - started
            if self.timeout is not None and elapsed >= self.timeout:
                return self.timeout_error(f"no answer within {self.timeout:g}s")
            waiting = self.first_token_timeout is not None and not self.first_token.is_set()
            if waiting and elapsed >= self.first_token_timeout:  # type: ignore[operator]
                return self.timeout_error(f"no first token within {self.first_token_timeout:g}s")
        if self.watch is not None and self.watch.may_cut():
            return LayerDeadlineError(
                f"cut at the layer deadline ({self.watch.deadline:g}s), quorum met"
            )
        return None

    def next_check(self, started: float | None) -> float:
        """Seconds until ``verdict`` may change."""
        waits = [_CANCEL_POLL_S if self.cancelled is not None else _IDLE_POLL_S]
        if started is not None:
            elapsed = time.monotonic() - started
            if self.timeout is not None:
                waits.append(self.timeout - elapsed)
            if self.first_token_timeout is not None and not self.first_token.is_set():
                waits.append(self.first_token_timeout - elapsed)
        if self.watch is not None and (left := self.watch.until_deadline()) is not None:
            waits.append(left if left > 0 else _DEADLINE_POLL_S)
        return max(0.0, min(waits))


async def _retrying(make_call: Callable[[], Awaitable[T]], limits: CallLimits) -> T:
    while True:
        limits.attempts += 1
        if limits.limit is not None:
            await limits.limit.acquire()
        limits.sent.set()
        try:
            return await make_call()
        except Exception as error:
            if limits.attempts > limits.retry.max_retries or not is_transient(error):
                raise
            delay = limits.retry.delay(limits.attempts, error)
        finally:
            if limits.limit is not None:
                limits.limit.release()
        await asyncio.sleep(delay)


async def call_async(make_call: Callable[[], Awaitable[T]], limits: CallLimits) -> T:
    """Run an async call with retries, its timeouts and the layer deadline.

    Raises:
        CallTimeoutError: A timeout passed; the call was cancelled.
        LayerDeadlineError: The layer deadline passed with the quorum met.
        RunCancelledError: The caller went away.
    """
    if not limits.bounded and limits.cancelled is None:
        return await _retrying(make_call, limits)
    task = asyncio.ensure_future(_retrying(make_call, limits))
    started: float | None = None
    try:
        while True:
            if started is None and limits.sent.is_set():
                started = time.monotonic()
            done, _ = await asyncio.wait({task}, timeout=limits.next_check(started))
            if done:
                return task.result()
            if started is None and limits.sent.is_set():
                started = time.monotonic()
            if (error := limits.verdict(started)) is not None:
                raise error
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def call_sync(make_call: Callable[[], Awaitable[T]], limits: CallLimits) -> T:
    """Run an async call from a sync caller, on the shared background loop.

    The call runs in a copy of the caller's context; it is cancelled when
    ``limits.cancelled`` is set or the waiting thread is interrupted.

    Raises:
        RunCancelledError: The caller went away.
    """
    future = _background_loop().submit(call_async(make_call, limits))
    try:
        while True:
            # Not ``result(timeout=...)``: its TimeoutError is the builtin one,
            # which the call's own timeout errors subclass.
            if wait_futures([future], timeout=_CANCEL_POLL_S).done:
                return future.result()
            if limits.cancelled is not None and limits.cancelled.is_set():
                msg = "the caller went away; the call was cancelled"
                raise RunCancelledError(msg)
    finally:
        future.cancel()


def call_in_thread(invoke: Callable[[], T], limits: CallLimits) -> T:
    """Run a sync call with retries, the concurrency bound and (if bounded) its timeout.

    For models that cannot run on the background loop: the call runs in a
    worker thread; when it times out, is cut or cancelled, the caller gets the
    error at once and the thread is left to finish on its own.
    """
    if not limits.bounded and limits.cancelled is None:
        return _retrying_sync(invoke, limits)
    outcome: Future[T] = Future()
    context = contextvars.copy_context()

    def work() -> None:
        try:
            outcome.set_result(context.run(_retrying_sync, invoke, limits))
        except BaseException as error:
            outcome.set_exception(error)

    threading.Thread(target=work, name="moa-sync-call", daemon=True).start()
    started: float | None = None
    while True:
        if started is None and limits.sent.is_set():
            started = time.monotonic()
        if wait_futures([outcome], timeout=limits.next_check(started) or _DEADLINE_POLL_S).done:
            return outcome.result()
        if started is None and limits.sent.is_set():
            started = time.monotonic()
        if (error := limits.verdict(started)) is not None:
            raise error


def _retrying_sync(invoke: Callable[[], T], limits: CallLimits) -> T:
    while True:
        limits.attempts += 1
        if limits.limit is not None:
            limits.limit.acquire_sync()
        limits.sent.set()
        try:
            return invoke()
        except Exception as error:
            if limits.attempts > limits.retry.max_retries or not is_transient(error):
                raise
            delay = limits.retry.delay(limits.attempts, error)
        finally:
            if limits.limit is not None:
                limits.limit.release()
        time.sleep(delay)


class _BackgroundLoop:
    """One event loop on a daemon thread, shared by the sync path's inner calls."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._loop.run_forever, name="moa-calls", daemon=True)
        thread.start()

    def submit(self, coroutine: Awaitable[T]) -> Future[T]:
        """Start ``coroutine`` on the loop in a copy of the caller's context.

        Cancelling the returned future cancels the task.
        """
        context = contextvars.copy_context()
        result: Future[T] = Future()

        def start() -> None:
            task = context.run(self._loop.create_task, coroutine)  # type: ignore[arg-type]
            task.add_done_callback(lambda done: _copy_outcome(done, result))
            result.add_done_callback(
                lambda f: self._loop.call_soon_threadsafe(task.cancel) if f.cancelled() else None
            )

        self._loop.call_soon_threadsafe(start)
        return result


def _copy_outcome(task: asyncio.Future[Any], result: Future[Any]) -> None:
    if result.done():
        return
    if task.cancelled():
        result.cancel()
    elif (error := task.exception()) is not None:
        result.set_exception(error)
    else:
        result.set_result(task.result())


_LOOP: _BackgroundLoop | None = None
_LOOP_LOCK = threading.Lock()


def _background_loop() -> _BackgroundLoop:
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = _BackgroundLoop()
        return _LOOP


@after_fork_in_child
def _forget_parent_threads() -> None:
    """In a forked child: a background loop of its own, free locks and slots.

    The parent's loop thread did not survive the fork; its calls never end in
    the child, so the slots they hold are freed.
    """
    global _LOOP
    if _LOOP is not None:
        orphan(_LOOP)
        _LOOP = None
    LAYER_WATCHES._lock = threading.Lock()
    for limit in list(_LIMITS):
        limit._forget_calls()
