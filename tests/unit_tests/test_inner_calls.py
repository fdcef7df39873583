"""Inner call helpers: retries, timeouts, cancellation, worker threads, slots."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import openai
import pytest

from langchain_moa.resilience import (
    AggregatorTimeoutError,
    CallLimits,
    ConcurrencyLimit,
    ProposerTimeoutError,
    RetryPolicy,
    RunCancelledError,
    call_async,
    call_in_thread,
    call_sync,
)

HANG_S = 10.0
"""How long a hung fake call blocks at most (so a failing test still ends)."""


@contextmanager
def caller_goes_away_after(seconds: float) -> Iterator[threading.Event]:
    """The ``cancelled`` event of a caller that leaves after ``seconds``."""
    cancelled = threading.Event()
    timer = threading.Timer(seconds, cancelled.set)
    timer.start()
    try:
        yield cancelled
    finally:
        timer.cancel()


def status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(status, headers=headers or {}, request=request)
    return openai.APIStatusError("boom", response=response, body=None)


class Flaky:
    """A sync call failing with the given errors, then answering."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls: list[float] = []

    def __call__(self) -> str:
        self.calls.append(time.monotonic())
        if self.errors:
            raise self.errors.pop(0)
        return "answer"


def quick(max_retries: int) -> RetryPolicy:
    return RetryPolicy(max_retries=max_retries, base_delay=0.001, max_delay=0.01)


def test_sync_calls_retry_transient_errors_within_the_budget() -> None:
    flaky = Flaky(status_error(503), status_error(429))
    limits = CallLimits(retry=quick(2))
    assert call_in_thread(flaky, limits) == "answer"
    assert (len(flaky.calls), limits.attempts) == (3, 3)


def test_sync_calls_give_up_after_the_retry_budget() -> None:
    last = status_error(503)
    flaky = Flaky(status_error(503), status_error(503), last, status_error(503))
    limits = CallLimits(retry=quick(2))
    with pytest.raises(openai.APIStatusError) as raised:
        call_in_thread(flaky, limits)
    assert raised.value is last
    assert (len(flaky.calls), limits.attempts) == (3, 3)


def test_sync_calls_do_not_retry_permanent_errors() -> None:
    flaky = Flaky(status_error(400))
    limits = CallLimits(retry=quick(2))
    with pytest.raises(openai.APIStatusError):
        call_in_thread(flaky, limits)
    assert (len(flaky.calls), limits.attempts) == (1, 1)


def test_sync_retries_wait_the_servers_retry_after() -> None:
    # No backoff of our own: every gap between attempts is the server's Retry-After.
    flaky = Flaky(
        status_error(429, {"retry-after": "0.3"}), status_error(429, {"retry-after": "0.3"})
    )
    limits = CallLimits(retry=RetryPolicy(max_retries=2, base_delay=0.0, max_delay=5.0))
    assert call_in_thread(flaky, limits) == "answer"
    gaps = [b - a for a, b in zip(flaky.calls, flaky.calls[1:], strict=False)]
    assert len(gaps) == 2
    assert all(gap >= 0.29 for gap in gaps)


@pytest.fixture
def hang() -> Iterator[tuple[Callable[[], str], list[threading.Thread]]]:
    """A sync call that hangs (until the test ends), and the threads it ran in."""
    release = threading.Event()
    threads: list[threading.Thread] = []

    def hung() -> str:
        threads.append(threading.current_thread())
        release.wait(HANG_S)
        return "too late"

    yield hung, threads
    release.set()


def test_a_hung_sync_call_times_out_and_cannot_keep_the_interpreter_alive(
    hang: tuple[Callable[[], str], list[threading.Thread]],
) -> None:
    hung, threads = hang
    limits = CallLimits(retry=quick(0), timeout=0.3, timeout_error=AggregatorTimeoutError)
    with pytest.raises(AggregatorTimeoutError):
        call_in_thread(hung, limits)
    assert len(threads) == 1
    assert threads[0] is not threading.current_thread()
    assert threads[0].name == "moa-sync-call"
    assert threads[0].daemon


def test_an_unbounded_sync_call_is_cancelled_when_the_caller_goes_away(
    hang: tuple[Callable[[], str], list[threading.Thread]],
) -> None:
    hung, threads = hang
    with caller_goes_away_after(0.2) as cancelled, pytest.raises(RunCancelledError) as raised:
        call_in_thread(hung, CallLimits(retry=quick(0), cancelled=cancelled))
    assert str(raised.value) == "the caller went away; the call was cancelled"
    assert [thread.name for thread in threads] == ["moa-sync-call"]


def test_a_sync_stream_without_a_first_token_in_time_is_cut(
    hang: tuple[Callable[[], str], list[threading.Thread]],
) -> None:
    hung, _ = hang
    limits = CallLimits(
        retry=quick(0), first_token_timeout=0.2, timeout_error=AggregatorTimeoutError
    )
    with pytest.raises(AggregatorTimeoutError) as raised:
        call_in_thread(hung, limits)
    assert str(raised.value) == "no first token within 0.2s"


def test_a_sync_stream_whose_first_token_came_in_time_may_run_longer() -> None:
    limits = CallLimits(retry=quick(0), first_token_timeout=0.2)

    def streams_slowly() -> str:
        limits.first_token.set()
        time.sleep(0.6)
        return "whole answer"

    assert call_in_thread(streams_slowly, limits) == "whole answer"


def test_a_sync_caller_going_away_is_freed_even_if_the_call_blocks_its_loop() -> None:
    # A model doing blocking work on the shared loop must not hold its caller hostage.
    unblock = threading.Event()

    async def blocking() -> str:
        unblock.wait(HANG_S)
        return "too late"

    try:
        with caller_goes_away_after(0.2) as cancelled, pytest.raises(RunCancelledError) as raised:
            call_sync(blocking, CallLimits(retry=quick(0), cancelled=cancelled))
    finally:
        unblock.set()
    assert str(raised.value) == "the caller went away; the call was cancelled"


def test_sync_path_calls_run_on_a_daemon_loop_thread() -> None:
    async def where() -> tuple[str, bool]:
        thread = threading.current_thread()
        return thread.name, thread.daemon

    assert call_sync(where, CallLimits(retry=quick(0))) == ("moa-calls", True)


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX interval timers")
def test_interrupting_a_sync_caller_cancels_its_call_for_real() -> None:
    # Ctrl-C in the waiting thread must not leave the call running on the shared loop.
    assert threading.current_thread() is threading.main_thread()
    cancelled = threading.Event()

    async def slow() -> str:
        try:
            await asyncio.sleep(HANG_S)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "too late"

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with pytest.raises(KeyboardInterrupt):
            call_sync(slow, CallLimits(retry=quick(0)))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert cancelled.wait(5.0)


async def test_an_unbounded_async_call_is_cancelled_when_the_caller_goes_away() -> None:

    async def slow() -> str:
        await asyncio.sleep(HANG_S)
        return "too late"

    with caller_goes_away_after(0.2) as cancelled, pytest.raises(RunCancelledError):
        await call_async(slow, CallLimits(retry=quick(0), cancelled=cancelled))


async def test_a_timed_out_async_call_is_cancelled_before_the_caller_hears_of_it() -> None:
    # By the time the timeout error arrives, the call has stopped and freed its slot.
    stopped: list[str] = []
    limit = ConcurrencyLimit(1)

    async def slow() -> str:
        try:
            await asyncio.sleep(HANG_S)
        finally:
            stopped.append("stopped")
        return "too late"

    limits = CallLimits(retry=quick(0), timeout=0.2, limit=limit)
    with pytest.raises(ProposerTimeoutError):
        await call_async(slow, limits)
    assert stopped == ["stopped"]
    assert Acquirer(limit).holds_after(5.0)


class Acquirer:
    """A thread waiting for a slot of ``limit``."""

    def __init__(self, limit: ConcurrencyLimit) -> None:
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(limit,), daemon=True)
        self.thread.start()

    def _run(self, limit: ConcurrencyLimit) -> None:
        try:
            limit.acquire_sync()
        except BaseException as error:
            self.errors.append(error)

    def holds_after(self, seconds: float) -> bool:
        self.thread.join(seconds)
        assert not self.errors
        return not self.thread.is_alive()


def test_sync_waiters_get_freed_slots_in_turn_and_never_more_than_the_limit() -> None:
    limit = ConcurrencyLimit(1)
    first = Acquirer(limit)
    assert first.holds_after(5.0)
    second = Acquirer(limit)
    assert not second.holds_after(0.2)
    limit.release()
    assert second.holds_after(5.0)
    third = Acquirer(limit)
    assert not third.holds_after(0.2)  # the slot went to the second, not back to the pool
    limit.release()
    assert third.holds_after(5.0)
    limit.release()
    fourth = Acquirer(limit)
    assert fourth.holds_after(5.0)
    assert not Acquirer(limit).holds_after(0.2)  # the pool still has one slot only


def test_a_waiter_whose_event_loop_was_closed_does_not_take_a_slot() -> None:
    limit = ConcurrencyLimit(1)
    limit.acquire_sync()
    loop = asyncio.new_event_loop()
    waiter = loop.create_task(limit.acquire())
    loop.run_until_complete(asyncio.sleep(0.05))  # the waiter is queued
    assert not waiter.done()
    loop.close()  # abandoned with the waiter still queued
    limit.release()
    assert Acquirer(limit).holds_after(5.0)


async def test_a_waiter_cancelled_while_waiting_gives_its_place_up() -> None:
    limit = ConcurrencyLimit(1)
    await limit.acquire()
    waiter = asyncio.ensure_future(limit.acquire())
    await asyncio.sleep(0.05)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    limit.release()
    await asyncio.wait_for(limit.acquire(), timeout=5.0)  # the slot was not lost


async def test_a_waiter_cancelled_just_after_being_handed_a_slot_returns_it() -> None:
    limit = ConcurrencyLimit(1)
    await limit.acquire()
    waiter = asyncio.ensure_future(limit.acquire())
    await asyncio.sleep(0.05)
    limit.release()  # hands the slot to the waiter ...
    waiter.cancel()  # ... which goes away before it could use it
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled()
    await asyncio.wait_for(limit.acquire(), timeout=5.0)  # the slot was not lost
