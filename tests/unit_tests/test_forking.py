"""A forked child does not inherit what its parent's threads held (see ``forking``)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from langchain_moa import budget, cost, resilience
from langchain_moa.resilience import LAYER_WATCHES, CallLimits, ConcurrencyLimit, RetryPolicy

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no fork")


def in_forked_child(check: Callable[[], bool], within: float = 20.0) -> str:
    """Run ``check`` in a forked child: ``"true"``, ``"false"``, ``"raised"`` or ``"hung"``."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 3
        try:
            code = 0 if check() else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {0: "true", 1: "false"}.get(os.waitstatus_to_exitcode(status), "raised")
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"


@contextmanager
def held_by_a_thread(*locks: threading.Lock) -> Iterator[None]:
    """Hold ``locks`` in another thread for the duration."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        holding.set()
        release.wait()
        for lock in locks:
            lock.release()

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait()
    try:
        yield
    finally:
        release.set()
        thread.join()


def test_module_locks_held_at_fork_are_free_in_the_child() -> None:
    modules = {budget: "_NO_COUNTER_LOCK", cost: "_CACHE_LOCK", resilience: "_LOOP_LOCK"}

    def all_free() -> bool:
        return all(getattr(module, name).acquire(timeout=2) for module, name in modules.items())

    with held_by_a_thread(*(getattr(module, name) for module, name in modules.items())):
        assert in_forked_child(all_free) == "true"


def test_a_full_concurrency_limit_and_a_held_watch_lock_are_free_in_the_child() -> None:
    limit = ConcurrencyLimit(1)
    limit.acquire_sync()  # the parent's call holds the only slot

    def free() -> bool:
        taken = threading.Thread(target=limit.acquire_sync, daemon=True)
        taken.start()
        taken.join(2)
        LAYER_WATCHES.open("child", deadline=None, quorum=1)  # needs the watches' lock
        return not taken.is_alive() and LAYER_WATCHES.get("child") is not None

    try:
        with held_by_a_thread(LAYER_WATCHES._lock):
            assert in_forked_child(free) == "true"
    finally:
        limit.release()


def test_a_forked_child_runs_sync_calls_on_a_background_loop_of_its_own() -> None:
    async def answer() -> str:
        await asyncio.sleep(0)
        return "answered"

    limits = CallLimits(retry=RetryPolicy(max_retries=0), timeout=5)
    assert resilience.call_sync(answer, limits) == "answered"  # the parent's loop runs

    def answers() -> bool:
        outcome: list[str] = []
        child_limits = CallLimits(retry=RetryPolicy(max_retries=0), timeout=5)
        call = threading.Thread(
            target=lambda: outcome.append(resilience.call_sync(answer, child_limits)),
            daemon=True,
        )
        call.start()
        call.join(10)
        return outcome == ["answered"]

    assert in_forked_child(answers) == "true"
