"""One ensemble run per request, in a task of its own, cancelled with its client.

The run is a task that feeds a queue: the answer (``ainvoke``) or its chunks
(``astream``), then the end or the error. Cancelling the task (the client
went away, or the server's deadline passed) cancels the ensemble's inner
calls, which closes their HTTP requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable

from langchain_moa.server.errors import RequestTimeoutError

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
"""An ASGI ``receive`` callable."""


class ClientGoneError(Exception):
    """The client disconnected before the answer was ready."""


class EnsembleRun:
    """The ensemble answering one request, started at once.

    Args:
        runnable: The ensemble with the request's arguments bound.
        messages: The conversation.
        stream: ``astream`` (chunks) rather than ``ainvoke`` (one message).
        timeout: Seconds before the run is cancelled (``None``: no limit).
        on_done: Called once when the run ends, however it ends.
    """

    def __init__(
        self,
        runnable: Runnable[LanguageModelInput, BaseMessage],
        messages: list[BaseMessage],
        *,
        stream: bool,
        timeout: float | None,
        on_done: Callable[[], None],
    ) -> None:
        self._runnable = runnable
        self._messages = messages
        self._stream = stream
        self._timeout = timeout
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._task = asyncio.ensure_future(self._pump())
        self._task.add_done_callback(lambda _: on_done())

    async def _pump(self) -> None:
        try:
            await asyncio.wait_for(self._produce(), self._timeout)
        except asyncio.TimeoutError:  # only the deadline: _produce raises nothing
            self._queue.put_nowait(("error", RequestTimeoutError()))

    async def _produce(self) -> None:
        try:
            if self._stream:
                async for chunk in self._runnable.astream(self._messages):
                    self._queue.put_nowait(("item", chunk))
            else:
                self._queue.put_nowait(("item", await self._runnable.ainvoke(self._messages)))
        except Exception as error:
            self._queue.put_nowait(("error", error))
            return
        self._queue.put_nowait(("done", None))

    async def next(self) -> Any | None:
        """The next message or chunk; ``None`` at the end.

        Raises:
            Exception: What the ensemble raised, or ``RequestTimeoutError``.
        """
        kind, value = await self._queue.get()
        if kind == "error":
            raise value
        if kind == "done":
            self._queue.put_nowait((kind, value))  # stays at the end
            return None
        return value

    async def next_unless_gone(self, receive: Receive) -> Any | None:
        """:meth:`next`, but cancel the run if the client disconnects first.

        Args:
            receive: The request's ASGI ``receive`` (its body already read).

        Raises:
            ClientGoneError: The client disconnected; the run is cancelled.
        """
        item = asyncio.ensure_future(self.next())
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({item, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.cancel()
            raise
        finally:
            for waiter in (item, gone):
                if not waiter.done():
                    waiter.cancel()
        if item.done() and not item.cancelled():
            return item.result()
        self.cancel()
        raise ClientGoneError

    def cancel(self) -> None:
        """Stop the run and its inner calls (nothing happens once it ended)."""
        self._task.cancel()


async def _disconnected(receive: Receive) -> None:
    """Return when the client disconnects (the request body must be read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
