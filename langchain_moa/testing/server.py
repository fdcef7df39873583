"""A local OpenAI-compatible Chat Completions server for tests and development.

:class:`OpenAISimulator` runs an aiohttp server on its own event loop in a
background daemon thread and answers ``POST /v1/chat/completions`` (plain and
server-sent-event streaming) and ``GET /v1/models`` deterministically, so that
``ChatOpenAI(base_url=sim.base_url, api_key="sim", model="m1")`` works end to
end without any network access. The answers are described in
:mod:`langchain_moa.testing.answers`; per-model latency and faults are set with
:class:`~langchain_moa.testing.behavior.ModelBehavior`.

The simulator only ever listens on a loopback address. It never logs or stores
request headers (in particular ``Authorization``); the ``echo_key`` knob only
echoes the caller's key into the error body of that same request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import ipaddress
import json
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from aiohttp import web

from langchain_moa.testing.answers import (
    RequestError,
    SimulatedTurn,
    completion_response,
    error_body,
    request_digest,
    simulate,
    stream_chunks,
    validate_request,
)
from langchain_moa.testing.behavior import ModelBehavior

if TYPE_CHECKING:
    from langchain_openai import ChatOpenAI

__all__ = ["DEFAULT_MODELS", "OpenAISimulator", "RecordedRequest", "main"]

DEFAULT_MODELS: tuple[str, ...] = ("sim-model", "m1", "m2", "m3", "aggregator")
"""Model ids always listed by ``GET /v1/models`` (any name is accepted)."""

_DEFAULT_BEHAVIOR = ModelBehavior()
_STARTUP_TIMEOUT = 30.0
_SHUTDOWN_TIMEOUT = 10.0
_HANDLER_SHUTDOWN_GRACE = 0.25
_MAX_BODY_BYTES = 64 * 1024 * 1024
_POLL_SECONDS = 0.05

_KEY_HELP_URL = "https://platform.openai.com/account/api-keys"

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class RecordedRequest:
    """A request received by ``POST /v1/chat/completions``.

    Only requests whose body is a JSON object are recorded (invalid ones
    included). Headers are never recorded.

    Attributes:
        model: The ``model`` of the body (``""`` when missing or not a string).
        body: The decoded JSON body.
        time: ``time.monotonic()`` when the request was received.
    """

    model: str
    body: dict[str, Any]
    time: float


@dataclass
class _ModelState:
    behavior: ModelBehavior
    rng: random.Random
    requests: int = 0


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


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _as_behavior(value: ModelBehavior | Mapping[str, Any]) -> ModelBehavior:
    if isinstance(value, ModelBehavior):
        return value
    return ModelBehavior.from_dict(value)


def _echo_key_message(request: web.Request, reason: str) -> str:
    """Build a provider-style error message that leaks the caller's API key.

    The key is read from the ``Authorization: Bearer <key>`` header (the whole
    header value for another scheme, ``""`` without one) and only ever put
    into the message returned here: it is neither logged nor stored.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() == "bearer":
        header = key.strip()
    return (
        f"Incorrect API key provided: {header}. You can find your API key at "
        f"{_KEY_HELP_URL}. ({reason})"
    )


def _shape_completion(
    response: dict[str, Any], turn: SimulatedTurn, behavior: ModelBehavior
) -> dict[str, Any]:
    """Apply ``empty_choices``, ``null_content`` and ``no_finish_reason``."""
    if behavior.empty_choices:
        response["choices"] = []
        return response
    choice = response["choices"][0]
    if behavior.null_content and turn.tool_call is None:
        choice["message"]["content"] = None
        choice["finish_reason"] = "stop"
    if behavior.no_finish_reason:
        choice["finish_reason"] = None
    return response


def _null_content_chunks(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace the token chunks by a content-less role chunk and a finish chunk."""
    role = copy.deepcopy(chunks[0])
    role["choices"][0].update(delta={"role": "assistant", "content": None}, finish_reason=None)
    finish = copy.deepcopy(chunks[0])
    finish["choices"][0].update(delta={}, finish_reason="stop")
    return [role, finish, *(chunk for chunk in chunks if not chunk["choices"])]


def _shape_stream(
    chunks: list[dict[str, Any]], turn: SimulatedTurn, behavior: ModelBehavior
) -> list[dict[str, Any]]:
    """Apply ``null_content``, ``empty_choices`` and ``no_finish_reason``."""
    if behavior.null_content and turn.tool_call is None:
        chunks = _null_content_chunks(chunks)
    for chunk in chunks:
        if behavior.empty_choices:
            chunk["choices"] = []
        if behavior.no_finish_reason:
            for choice in chunk["choices"]:
                choice["finish_reason"] = None
    return chunks


def _token_chunks(chunks: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Return the first ``limit`` token chunks, none carrying a ``finish_reason``."""
    tokens = [chunk for chunk in chunks if chunk["choices"]][:limit]
    for chunk in tokens:
        chunk["choices"][0]["finish_reason"] = None
    return tokens


def _drop_connection(request: web.Request) -> None:
    """Close the connection at once: no further byte reaches the client.

    Data already written is still flushed, but a chunked body is left
    unterminated, so the client sees a broken response.
    """
    transport = request.transport
    if transport is not None:
        transport.close()


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
        self._record = record_requests
        self._lock = threading.Lock()
        self._in_flight = 0
        self._peak_in_flight = 0
        self._lifecycle = threading.Lock()
        self._states: dict[str, _ModelState] = {}
        self._requests: list[RecordedRequest] = []
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
        app = web.Application(middlewares=[self._error_middleware], client_max_size=_MAX_BODY_BYTES)
        if not self._keep_alive:
            app.on_response_prepare.append(self._close_connection)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_get("/v1/models/{model}", self._get_model)
        runner = web.AppRunner(
            app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=_HANDLER_SHUTDOWN_GRACE,
        )
        await runner.setup()
        site = web.SockSite(runner, sock, backlog=self._backlog)
        await site.start()
        self._runner = runner

    @staticmethod
    async def _close_connection(request: web.Request, response: web.StreamResponse) -> None:
        # The hook runs after aiohttp chose the headers: announce the close too.
        response.force_close()
        response.headers["Connection"] = "close"

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
        with self._lock:
            return {model: state.behavior for model, state in self._states.items()}

    def set_behavior(self, model: str, behavior: ModelBehavior | Mapping[str, Any] | None) -> None:
        """Set (or with ``None`` remove) the behaviour of a model.

        Setting a behaviour resets the model's ``fail_first`` counter and its
        ``failure_rate`` random generator (``random.Random(behavior.seed)``).
        Thread-safe; it applies to requests that arrive afterwards.

        Args:
            model: The model name, as sent in requests.
            behavior: The behaviour, a mapping of knobs, or ``None``.
        """
        if not isinstance(model, str):
            msg = f"model must be a string, got {model!r}"
            raise TypeError(msg)
        if behavior is None:
            with self._lock:
                self._states.pop(model, None)
            return
        resolved = _as_behavior(behavior)
        state = _ModelState(behavior=resolved, rng=random.Random(resolved.seed))  # noqa: S311
        with self._lock:
            self._states[model] = state

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the recorded chat-completion requests, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, model: str) -> list[RecordedRequest]:
        """Return the recorded requests for one model, oldest first.

        Args:
            model: The model name.

        Returns:
            The matching requests.
        """
        with self._lock:
            return [request for request in self._requests if request.model == model]

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._requests.clear()

    # -- request handling --------------------------------------------------

    def _record_request(self, body: dict[str, Any], received: float) -> None:
        if not self._record:
            return
        model = body.get("model")
        recorded = RecordedRequest(
            model=model if isinstance(model, str) else "",
            body=copy.deepcopy(body),
            time=received,
        )
        with self._lock:
            self._requests.append(recorded)

    def _plan(self, model: str) -> tuple[ModelBehavior, int | None, str]:
        """Return the behaviour, the failure status (if any) and its message."""
        with self._lock:
            state = self._states.get(model)
            if state is None:
                return _DEFAULT_BEHAVIOR, None, ""
            state.requests += 1
            behavior = state.behavior
            if state.requests <= behavior.fail_first:
                return (
                    behavior,
                    behavior.failure_status,
                    f"simulated failure {state.requests} of the first "
                    f"{behavior.fail_first} requests for model {model!r}",
                )
            if behavior.error_status is not None:
                return (
                    behavior,
                    behavior.error_status,
                    f"simulated error of model {model!r}",
                )
            if behavior.failure_rate > 0 and state.rng.random() < behavior.failure_rate:
                return (
                    behavior,
                    behavior.failure_status,
                    f"simulated random failure of model {model!r}",
                )
            return behavior, None, ""

    @staticmethod
    def _error(
        status: int,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> web.Response:
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = _format_seconds(retry_after)
        return web.json_response(
            error_body(status, message, param=param), status=status, headers=headers
        )

    @web.middleware
    async def _error_middleware(
        self, request: web.Request, handler: _Handler
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return self._error(exc.status, f"{exc.reason}: {request.path}")
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as exc:
            return self._error(500, f"simulator error: {type(exc).__name__}: {exc}")

    async def _list_models(self, request: web.Request) -> web.Response:
        with self._lock:
            configured = list(self._states)
        names = list(dict.fromkeys([*DEFAULT_MODELS, *configured]))
        return web.json_response(
            {"object": "list", "data": [self._model_object(name) for name in names]}
        )

    async def _get_model(self, request: web.Request) -> web.Response:
        return web.json_response(self._model_object(request.match_info["model"]))

    @staticmethod
    def _model_object(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "simulator"}

    async def _wait_until_gone(self, request: web.Request) -> None:
        """Sleep until the client disconnects or the simulator stops."""
        stopping = self._stopping
        while stopping is None or not stopping.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            if stopping is None:
                await asyncio.sleep(_POLL_SECONDS)
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), _POLL_SECONDS * 10)

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
        try:
            return await self._answer_chat(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    @property
    def peak_in_flight(self) -> int:
        """Most chat-completion requests in progress at once since the last reset."""
        with self._lock:
            return self._peak_in_flight

    def reset_peak_in_flight(self) -> None:
        """Start counting ``peak_in_flight`` afresh."""
        with self._lock:
            self._peak_in_flight = self._in_flight

    async def _answer_chat(self, request: web.Request) -> web.StreamResponse:
        received = time.monotonic()
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return self._error(
                400,
                "We could not parse the JSON body of your request. The simulator "
                "expects a JSON object.",
            )
        if isinstance(body, dict):
            self._record_request(body, received)
        try:
            validate_request(body)
        except RequestError as exc:
            return self._error(400, exc.message, param=exc.param)
        model = body["model"]
        behavior, failure, message = self._plan(model)
        if behavior.hang:
            await self._wait_until_gone(request)
            return self._error(503, f"simulated hang of model {model!r} ended")
        if behavior.first_token_latency:
            await asyncio.sleep(behavior.first_token_latency)
        if failure is not None:
            if behavior.echo_key:
                message = _echo_key_message(request, message)
            return self._error(failure, message, retry_after=behavior.retry_after)
        turn = simulate(body)
        response_id = f"chatcmpl-{request_digest(body)[:24]}"
        created = int(time.time())
        if behavior.malformed:
            return await self._malformed(request, turn, response_id, bool(body.get("stream")))
        if not body.get("stream"):
            return await self._complete(request, behavior, turn, response_id, created)
        options = body.get("stream_options") or {}
        chunks = stream_chunks(
            turn,
            response_id=response_id,
            created=created,
            include_usage=bool(options.get("include_usage")),
        )
        if behavior.die_after_tokens is not None or behavior.hang_after_tokens is not None:
            return await self._broken_stream(request, behavior, chunks)
        response = await self._open_stream(request)
        with contextlib.suppress(ConnectionError):
            await self._write_chunks(response, _shape_stream(chunks, turn, behavior), behavior)
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        return response

    async def _complete(
        self,
        request: web.Request,
        behavior: ModelBehavior,
        turn: SimulatedTurn,
        response_id: str,
        created: int,
    ) -> web.StreamResponse:
        """Answer a non-streaming request."""
        if behavior.die_after_tokens is not None:
            _drop_connection(request)
            # Never sent: aiohttp finds the connection closed and gives up.
            return web.Response(status=204)
        if behavior.hang_after_tokens is not None:
            await self._wait_until_gone(request)
            return self._error(503, f"simulated hang of model {turn.model!r} ended")
        if behavior.token_delay:
            await asyncio.sleep(behavior.token_delay * turn.completion_tokens)
        response = completion_response(turn, response_id=response_id, created=created)
        return web.json_response(_shape_completion(response, turn, behavior))

    async def _broken_stream(
        self,
        request: web.Request,
        behavior: ModelBehavior,
        chunks: list[dict[str, Any]],
    ) -> web.StreamResponse:
        """Stream the first tokens, then drop the connection or fall silent."""
        if behavior.die_after_tokens is not None:
            limit = behavior.die_after_tokens
        else:
            limit = behavior.hang_after_tokens or 0
        response = await self._open_stream(request)
        with contextlib.suppress(ConnectionError):
            await self._write_chunks(response, _token_chunks(chunks, limit), behavior)
            if behavior.hang_after_tokens is not None:
                await self._wait_until_gone(request)
        _drop_connection(request)
        return response

    async def _write_chunks(
        self,
        response: web.StreamResponse,
        chunks: Sequence[Mapping[str, Any]],
        behavior: ModelBehavior,
    ) -> None:
        """Send chunks as events, ``token_delay`` apart (not before the usage chunk)."""
        for index, chunk in enumerate(chunks):
            if index and behavior.token_delay and chunk.get("usage") is None:
                await asyncio.sleep(behavior.token_delay)
            await response.write(self._event(chunk))

    @staticmethod
    def _event(chunk: Mapping[str, Any]) -> bytes:
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()

    @staticmethod
    async def _open_stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            },
        )
        await response.prepare(request)
        await response.write(b"")  # send the headers now, before any event
        return response

    async def _malformed(
        self,
        request: web.Request,
        turn: SimulatedTurn,
        response_id: str,
        streaming: bool,
    ) -> web.StreamResponse:
        broken = (
            f'{{"id": "{response_id}", "object": "chat.completion", "model": '
            f'{json.dumps(turn.model)}, "choices": [{{"index": 0, "message": '
        )
        if not streaming:
            return web.Response(status=200, text=broken, content_type="application/json")
        first = stream_chunks(
            turn, response_id=response_id, created=int(time.time()), include_usage=False
        )[0]
        first["choices"][0]["finish_reason"] = None
        response = await self._open_stream(request)
        with contextlib.suppress(ConnectionError):
            await response.write(self._event(first))
            await response.write(f"data: {broken}\n\n".encode())
            await response.write_eof()
        return response


# -- command line --------------------------------------------------------------


def _load_behaviors(path: str) -> dict[str, ModelBehavior]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        msg = "the behaviors file must hold a JSON object: model name -> knobs"
        raise TypeError(msg)
    return {str(model): ModelBehavior.from_dict(knobs) for model, knobs in data.items()}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moa-simulator",
        description=(
            "Run a local OpenAI-compatible Chat Completions simulator "
            "(deterministic answers, per-model latency and faults). It prints "
            "its base URL and serves until interrupted (Ctrl-C)."
        ),
        epilog=(
            'Example behaviors file: {"slow": {"first_token_latency": 0.5}, '
            '"flaky": {"failure_rate": 0.3, "seed": 1}, '
            '"limited": {"error_status": 429, "retry_after": 2}}'
        ),
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="loopback address to listen on (default: %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8765,
        help="TCP port, 0 for any free port (default: %(default)s)",
    )
    parser.add_argument(
        "--behaviors",
        metavar="FILE",
        help="JSON file with an object mapping model names to behaviour knobs",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator from the command line until interrupted.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    behaviors: dict[str, ModelBehavior] = {}
    if args.behaviors:
        try:
            behaviors = _load_behaviors(args.behaviors)
        except (OSError, ValueError, TypeError) as exc:
            parser.error(f"--behaviors {args.behaviors}: {exc}")
    try:
        simulator = OpenAISimulator(
            host=args.host,
            port=args.port,
            behaviors=behaviors,
            record_requests=False,
        )
    except ValueError as exc:
        parser.error(str(exc))
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_signal)
    try:
        simulator.start()
    except OSError as exc:
        sys.stderr.write(f"moa-simulator: cannot listen on {args.host}:{args.port}: {exc}\n")
        return 1
    try:
        with simulator:
            sys.stdout.write(f"{simulator.base_url}\n")
            sys.stdout.flush()
            sys.stderr.write(
                "OpenAI simulator running; press Ctrl-C to stop.\n"
                f"  e.g. ChatOpenAI(base_url={simulator.base_url!r}, "
                'api_key="sim", model="m1")\n'
            )
            sys.stderr.flush()
            with contextlib.suppress(KeyboardInterrupt):
                while not stop.wait(0.5):
                    pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
