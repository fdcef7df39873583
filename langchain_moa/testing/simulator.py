"""The OpenAI simulator object: a loopback server on its own thread and event loop.

:class:`OpenAISimulator` binds a loopback socket, runs the aiohttp app of
:mod:`langchain_moa.testing.handlers` on a background daemon thread and
exposes what the tests need: its ``base_url``, per-model behaviours, the
recorded requests and the load. It only ever listens on a loopback address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from langchain_moa.testing.behavior import ModelBehavior
from langchain_moa.testing.handlers import start_site
from langchain_moa.testing.simulator_state import RecordedRequest, SimulatorState

if TYPE_CHECKING:
    from aiohttp import web
    from langchain_openai import ChatOpenAI

__all__ = ["OpenAISimulator"]

_STARTUP_TIMEOUT = 30.0
_SHUTDOWN_TIMEOUT = 10.0


def _check_loopback(host: str) -> str:
    """Return the address to bind for ``host``, refusing non-loopback hosts."""
    if not isinstance(host, str):
        msg = f"host must be a string, got {host!r}"
        raise TypeError(msg)
    if host.lower() == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        msg = (
            f"refusing host {host!r}: the OpenAI simulator only listens on a "
            "loopback address (127.0.0.0/8, ::1 or 'localhost')"
        )
        raise ValueError(msg) from None
    if not address.is_loopback:
        msg = (
            f"refusing host {host!r}: it is not a loopback address; the OpenAI "
            "simulator only listens on 127.0.0.0/8, ::1 or 'localhost'"
        )
        raise ValueError(msg)
    return str(address)


class OpenAISimulator:
    """A local OpenAI-compatible Chat Completions server on a background thread.

    Example:
        ```python
        from langchain_openai import ChatOpenAI
        from langchain_moa.testing import ModelBehavior, OpenAISimulator

        with OpenAISimulator(behaviors={"slow": {"first_token_latency": 0.3}}) as sim:
            llm = ChatOpenAI(base_url=sim.base_url, api_key="sim", model="m1")
            assert llm.invoke("Hi").content == "m1 answers: Hi"
            sim.set_behavior("m2", ModelBehavior(error_status=429, retry_after=1))
            assert sim.requests_for("m1")[0].body["messages"][-1]["content"] == "Hi"
        ```

    The server runs on its own event loop, so the simulator is equally usable
    from synchronous code and from inside a running event loop (for instance
    under pytest-asyncio); ``async with`` is supported too.

    Args:
        host: A loopback address (``127.0.0.0/8``, ``::1`` or ``"localhost"``).
        port: The TCP port; ``0`` picks a free one (see :attr:`port`).
        behaviors: Initial behaviours, model name to :class:`ModelBehavior` (or
            a mapping of knobs).
        record_requests: Whether to keep the received requests
            (:attr:`requests`).
        backlog: The listen backlog (at least 500 concurrent connections are
            supported with the default).
        keep_alive: Whether to keep HTTP connections open between requests.
            Off by default: every response carries ``Connection: close``, so
            no client keeps a pooled connection that belongs to an event loop
            which is gone (``langchain_openai`` shares its httpx clients
            between instances, while pytest-asyncio gives every test a new
            loop).

    Raises:
        ValueError: If ``host`` is not a loopback address.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        behaviors: Mapping[str, ModelBehavior | Mapping[str, Any]] | None = None,
        *,
        record_requests: bool = True,
        backlog: int = 2048,
        keep_alive: bool = False,
    ) -> None:
        self._host = host
        self._bind_host = _check_loopback(host)
        if isinstance(port, bool) or not isinstance(port, int) or not (0 <= port <= 65535):
            msg = f"port must be an int within 0-65535, got {port!r}"
            raise ValueError(msg)
        self._requested_port = port
        self._port: int | None = None
        self._backlog = backlog
        self._keep_alive = keep_alive
        self._state = SimulatorState(record_requests=record_requests)
        self._lifecycle = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        for model, behavior in (behaviors or {}).items():
            self.set_behavior(model, behavior)

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> OpenAISimulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> OpenAISimulator:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        where = self.base_url if self.running else f"{self._host}, stopped"
        return f"{type(self).__name__}({where})"

    @property
    def running(self) -> bool:
        """Whether the server is started."""
        return self._thread is not None

    def start(self) -> OpenAISimulator:
        """Start serving (does nothing when already started).

        Returns:
            The simulator itself.

        Raises:
            OSError: If the port cannot be bound.
            RuntimeError: If the server thread does not come up.
        """
        with self._lifecycle:
            if self._thread is not None:
                return self
            family = socket.AF_INET6 if ":" in self._bind_host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                if os.name != "nt":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self._bind_host, self._requested_port))
                sock.listen(self._backlog)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            errors: list[BaseException] = []
            thread = threading.Thread(
                target=self._serve,
                args=(loop, sock, ready, errors),
                name=f"openai-simulator-{sock.getsockname()[1]}",
                daemon=True,
            )
            thread.start()
            if not ready.wait(_STARTUP_TIMEOUT) or errors:
                thread.join(_SHUTDOWN_TIMEOUT)
                sock.close()
                if errors:
                    raise errors[0]
                msg = "the OpenAI simulator did not start in time"
                raise RuntimeError(msg)
            self._port = sock.getsockname()[1]
            self._loop = loop
            self._thread = thread
            return self

    def stop(self) -> None:
        """Stop serving and join the server thread (does nothing when stopped).

        Requests still hanging get a 503 answer; streams still running are
        cut after a short grace period.
        """
        with self._lifecycle:
            thread, loop = self._thread, self._loop
            if thread is None or loop is None:
                return
            try:
                future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
                with contextlib.suppress(Exception):
                    future.result(_SHUTDOWN_TIMEOUT)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(_SHUTDOWN_TIMEOUT)
                self._thread = None
                self._loop = None

    def _serve(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        ready: threading.Event,
        errors: list[BaseException],
    ) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup(sock))
        except BaseException as exc:  # reported to start()
            errors.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _startup(self, sock: socket.socket) -> None:
        self._stopping = asyncio.Event()
        self._runner = await start_site(
            self._state, self._stopping, sock, backlog=self._backlog, keep_alive=self._keep_alive
        )

    async def _shutdown(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- public state --------------------------------------------------------

    @property
    def host(self) -> str:
        """The host given to the constructor."""
        return self._host

    @property
    def port(self) -> int:
        """The bound TCP port.

        Raises:
            RuntimeError: If the port is still unknown (``port=0``, not started).
        """
        if self._port is not None:
            return self._port
        if self._requested_port:
            return self._requested_port
        msg = "the OpenAI simulator is not started, so its port is not known yet"
        raise RuntimeError(msg)

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``http://<host>:<port>/v1``."""
        host = self._bind_host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"

    def chat_model(self, model: str, **kwargs: Any) -> ChatOpenAI:
        """A ``ChatOpenAI`` for ``model`` served by this simulator.

        Args:
            model: Any model name; its ``ModelBehavior`` applies.
            **kwargs: Further ``ChatOpenAI`` arguments (they override the
                defaults: API key ``"simulator"``, no retries, usage reported
                when streaming).

        Returns:
            The chat model, talking to the simulator over HTTP.
        """
        from langchain_openai import ChatOpenAI

        params: dict[str, Any] = {
            "api_key": "simulator",
            "max_retries": 0,
            "stream_usage": True,
            **kwargs,
        }
        return ChatOpenAI(base_url=self.base_url, model=model, **params)

    @property
    def behaviors(self) -> dict[str, ModelBehavior]:
        """A copy of the configured behaviours, by model name."""
        return self._state.behaviors

    def set_behavior(self, model: str, behavior: ModelBehavior | Mapping[str, Any] | None) -> None:
        """Set (or with ``None`` remove) the behaviour of a model.

        Setting a behaviour resets the model's ``fail_first`` counter and its
        ``failure_rate`` random generator (``random.Random(behavior.seed)``).
        Thread-safe; it applies to requests that arrive afterwards.

        Args:
            model: The model name, as sent in requests.
            behavior: The behaviour, a mapping of knobs, or ``None``.
        """
        self._state.set_behavior(model, behavior)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the recorded chat-completion requests, oldest first."""
        return self._state.requests

    def requests_for(self, model: str) -> list[RecordedRequest]:
        """Return the recorded requests for one model, oldest first.

        Args:
            model: The model name.

        Returns:
            The matching requests.
        """
        return self._state.requests_for(model)

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        self._state.clear_requests()

    @property
    def in_flight(self) -> int:
        """Chat-completion requests in progress now (a cancelled client's ends soon after)."""
        return self._state.in_flight

    @property
    def peak_in_flight(self) -> int:
        """Most chat-completion requests in progress at once since the last reset."""
        return self._state.peak_in_flight

    def reset_peak_in_flight(self) -> None:
        """Start counting ``peak_in_flight`` afresh."""
        self._state.reset_peak_in_flight()
