"""Each event loop's own HTTP client for the inner OpenAI-protocol models.

An httpx ``AsyncClient``, and every connection in its pool, belongs to the
event loop that used it. ``langchain_openai`` shares one such client among its
models (per base URL, for the whole process), so a model used on a second
loop (a second ``asyncio.run``, the sync path's background loop) fails with
"Event loop is closed" or hangs. So every inner call made on an event loop
uses a copy of its model whose ``openai`` client has the loop's own HTTP
client (:func:`on_running_loop`); a copy costs some microseconds.

A loop's client is closed when the loop shuts down (``asyncio.run`` and
``asyncio.Runner`` close the loop's async generators first, and each client
is watched by one) and dropped once its loop is found closed (a loop closed
by hand); a forked child starts with none. Models given an
``http_async_client`` of their own keep it, and models of other providers
are used as they are (see ``uses_loop_clients``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import Runnable

from langchain_moa._compat import openai_root_async_client
from langchain_moa.forking import after_fork_in_child, orphan
from langchain_moa.inner_models import chat_model_of, rewrap


def uses_loop_clients(model: Runnable) -> bool:
    """Whether ``model`` gets each loop's own HTTP client (an OpenAI-protocol model).

    Not for a model given its own ``http_async_client`` (its owner chose how
    it is shared), nor for models of other providers.
    """
    inner = chat_model_of(model)
    if inner is None or getattr(inner, "http_async_client", None) is not None:
        return False
    return openai_root_async_client(inner) is not None


async def on_running_loop(model: Runnable) -> Runnable:
    """``model`` for a call on the running loop: a copy with the loop's own client.

    Models that do not use loop clients (``uses_loop_clients``) are returned
    as they are.
    """
    if not uses_loop_clients(model):
        return model
    root = openai_root_async_client(chat_model_of(model))  # type: ignore[arg-type]
    private_root = root.with_options(http_client=await _client_of_running_loop())
    updates = {"root_async_client": private_root, "async_client": private_root.chat.completions}
    return rewrap(model, lambda inner: inner.model_copy(update=updates))


@dataclass
class _LoopClient:
    """One loop's HTTP client and the async generator that closes it at loop shutdown."""

    client: Any
    closer: AsyncIterator[None] | None = None


_CLIENTS: dict[asyncio.AbstractEventLoop, _LoopClient] = {}
_CLIENTS_LOCK = threading.Lock()


async def _client_of_running_loop() -> Any:
    """The running loop's HTTP client, made (and its closing arranged) on first use."""
    loop = asyncio.get_running_loop()
    with _CLIENTS_LOCK:
        known = _CLIENTS.get(loop)
        if known is not None:
            return known.client
        for old in [old for old in _CLIENTS if old.is_closed()]:
            del _CLIENTS[old]  # closed without shutting down: its client cannot be closed
        import openai

        entry = _LoopClient(openai.DefaultAsyncHttpxClient())
        _CLIENTS[loop] = entry
    # Held here: the loop only keeps weak references to its async generators.
    entry.closer = _close_at_shutdown(loop, entry)
    await entry.closer.__anext__()
    return entry.client


async def _close_at_shutdown(
    loop: asyncio.AbstractEventLoop, entry: _LoopClient
) -> AsyncIterator[None]:
    """Wait for the loop's ``shutdown_asyncgens``, then close and forget its client."""
    try:
        yield
    finally:
        with _CLIENTS_LOCK:
            if _CLIENTS.get(loop) is entry:
                del _CLIENTS[loop]
        await entry.client.aclose()


@after_fork_in_child
def _forget_parent_clients() -> None:
    """In a forked child: the parent's clients (and sockets) are the parent's."""
    for entry in _CLIENTS.values():
        orphan(entry)
    _CLIENTS.clear()
