"""The simulator's aiohttp app: its routes, its request handlers and its site.

``POST /v1/chat/completions`` validates the body, records it, asks the
:class:`~langchain_moa.testing.simulator_state.SimulatorState` for the model's
fault plan, waits and fails as that plan says, and otherwise sends the
simulated turn (:mod:`langchain_moa.testing.answers`) as one JSON body or as
server-sent events. ``GET /v1/models`` and ``GET /v1/models/{model}`` list
models. Request headers are never logged or stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from langchain_moa._extras import missing_extra
from langchain_moa.testing.answers import (
    SimulatedTurn,
    completion_response,
    pad_answer,
    request_digest,
    simulate,
    stream_chunks,
)
from langchain_moa.testing.behavior import ModelBehavior
from langchain_moa.testing.faults import (
    echo_key_message,
    shape_completion,
    shape_stream,
    stream_cut,
    token_chunks,
)
from langchain_moa.testing.simulator_state import SimulatorState
from langchain_moa.wire import (
    SSE_DONE,
    RequestError,
    error_body,
    model_list,
    model_object,
    sse_event,
    validate_request,
)

try:
    from aiohttp import web
except ImportError as _missing:  # pragma: no cover - depends on the install
    raise missing_extra("simulator", _missing) from _missing

__all__ = ["ChatHandlers", "start_site"]

_HANDLER_SHUTDOWN_GRACE = 0.25
_MAX_BODY_BYTES = 64 * 1024 * 1024
_POLL_SECONDS = 0.05

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def error_response(
    status: int, message: str, *, param: str | None = None, retry_after: float | None = None
) -> web.Response:
    """An OpenAI error body with ``status`` (and ``Retry-After`` when given)."""
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = _format_seconds(retry_after)
    return web.json_response(
        error_body(status, message, param=param), status=status, headers=headers
    )


@web.middleware
async def _error_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Answer every error in OpenAI's format, a bug in the simulator with a 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, f"{exc.reason}: {request.path}")
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception as exc:
        return error_response(500, f"simulator error: {type(exc).__name__}: {exc}")


async def _close_connection(request: web.Request, response: web.StreamResponse) -> None:
    # The hook runs after aiohttp chose the headers: announce the close too.
    response.force_close()
    response.headers["Connection"] = "close"


def _drop_connection(request: web.Request) -> None:
    """Close the connection at once: no further byte reaches the client.

    Data already written is still flushed, but a chunked body is left
    unterminated, so the client sees a broken response.
    """
    transport = request.transport
    if transport is not None:
        transport.close()


async def _open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200,
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"},
    )
    await response.prepare(request)
    await response.write(b"")  # send the headers now, before any event
    return response


async def _write_chunks(
    response: web.StreamResponse, chunks: Sequence[Mapping[str, Any]], behavior: ModelBehavior
) -> None:
    """Send chunks as events, ``token_delay`` apart (not before the usage chunk)."""
    for index, chunk in enumerate(chunks):
        if index and behavior.token_delay and chunk.get("usage") is None:
            await asyncio.sleep(behavior.token_delay)
        await response.write(sse_event(chunk))


def _model_object(name: str) -> dict[str, Any]:
    return model_object(name, owned_by="simulator")


class ChatHandlers:
    """The request handlers of one running simulator.

    Args:
        state: The behaviours, recorded requests and load they share with the
            simulator object.
        stopping: Set when the simulator stops: hanging requests end then.
    """

    def __init__(self, state: SimulatorState, stopping: asyncio.Event) -> None:
        self._state = state
        self._stopping = stopping

    def app(self, *, keep_alive: bool) -> web.Application:
        """The aiohttp application with the three routes.

        Args:
            keep_alive: Keep connections open between requests; otherwise
                every response carries ``Connection: close``.
        """
        app = web.Application(middlewares=[_error_middleware], client_max_size=_MAX_BODY_BYTES)
        if not keep_alive:
            app.on_response_prepare.append(_close_connection)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model}", self.get_model)
        return app

    async def list_models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``: the default and the configured models."""
        names = self._state.listed_models()
        return web.json_response(model_list([_model_object(name) for name in names]))

    async def get_model(self, request: web.Request) -> web.Response:
        """``GET /v1/models/{model}``: any name exists."""
        return web.json_response(_model_object(request.match_info["model"]))

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``, counted as in flight while it runs."""
        with self._state.in_progress():
            return await self._answer_chat(request)

    async def _wait_until_gone(self, request: web.Request) -> None:
        """Sleep until the client disconnects or the simulator stops."""
        while not self._stopping.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), _POLL_SECONDS * 10)

    async def _answer_chat(self, request: web.Request) -> web.StreamResponse:
        received = time.monotonic()
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return error_response(
                400,
                "We could not parse the JSON body of your request. The simulator "
                "expects a JSON object.",
            )
        if isinstance(body, dict):
            self._state.record(body, received)
        try:
            validate_request(body)
        except RequestError as exc:
            return error_response(400, exc.message, param=exc.param)
        model = body["model"]
        plan = self._state.plan(model)
        behavior = plan.behavior
        if behavior.hang:
            await self._wait_until_gone(request)
            return error_response(503, f"simulated hang of model {model!r} ended")
        if behavior.first_token_latency:
            await asyncio.sleep(behavior.first_token_latency)
        if plan.status is not None:
            message = plan.message
            if behavior.echo_key:
                message = echo_key_message(request.headers.get("Authorization", ""), message)
            return error_response(plan.status, message, retry_after=behavior.retry_after)
        turn = pad_answer(simulate(body), behavior.answer_tokens, body)
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
        cut = stream_cut(behavior)
        if cut is not None:
            return await self._broken_stream(request, behavior, token_chunks(chunks, cut))
        response = await _open_stream(request)
        with contextlib.suppress(ConnectionError):
            await _write_chunks(response, shape_stream(chunks, turn, behavior), behavior)
            await response.write(SSE_DONE)
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
            return error_response(503, f"simulated hang of model {turn.model!r} ended")
        if behavior.token_delay:
            await asyncio.sleep(behavior.token_delay * turn.completion_tokens)
        response = completion_response(turn, response_id=response_id, created=created)
        return web.json_response(shape_completion(response, turn, behavior))

    async def _broken_stream(
        self, request: web.Request, behavior: ModelBehavior, chunks: list[dict[str, Any]]
    ) -> web.StreamResponse:
        """Stream the first tokens, then drop the connection or fall silent."""
        response = await _open_stream(request)
        with contextlib.suppress(ConnectionError):
            await _write_chunks(response, chunks, behavior)
            if behavior.hang_after_tokens is not None:
                await self._wait_until_gone(request)
        _drop_connection(request)
        return response

    async def _malformed(
        self, request: web.Request, turn: SimulatedTurn, response_id: str, streaming: bool
    ) -> web.StreamResponse:
        """A body cut off mid-JSON (after one good chunk, when streaming)."""
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
        response = await _open_stream(request)
        with contextlib.suppress(ConnectionError):
            await response.write(sse_event(first))
            await response.write(f"data: {broken}\n\n".encode())
            await response.write_eof()
        return response


async def start_site(
    state: SimulatorState,
    stopping: asyncio.Event,
    sock: socket.socket,
    *,
    backlog: int,
    keep_alive: bool,
) -> web.AppRunner:
    """Serve the simulator's app on a bound, listening socket.

    Args:
        state: The shared state.
        stopping: Set when the simulator stops.
        sock: The socket.
        backlog: The listen backlog.
        keep_alive: Keep connections open between requests.

    Returns:
        The runner; ``await runner.cleanup()`` stops serving.
    """
    app = ChatHandlers(state, stopping).app(keep_alive=keep_alive)
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, shutdown_timeout=_HANDLER_SHUTDOWN_GRACE
    )
    await runner.setup()
    site = web.SockSite(runner, sock, backlog=backlog)
    await site.start()
    return runner
