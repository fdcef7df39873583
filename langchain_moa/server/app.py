"""``create_app``: Mixture-of-Agents ensembles behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import Runnable
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from langchain_moa.chat_model import MoAChatModel
from langchain_moa.errors import describe_error
from langchain_moa.server.auth import KeyChecker
from langchain_moa.server.errors import ApiError, InternalErrors, upstream_error
from langchain_moa.server.limits import CallerSlots, read_body, too_large
from langchain_moa.server.requests import ChatRequest, parse_chat_request
from langchain_moa.server.responses import ChunkWriter, completion
from langchain_moa.server.running import ClientGoneError, EnsembleRun
from langchain_moa.server.settings import ServerSettings
from langchain_moa.wire import (
    SSE_DONE,
    RequestError,
    loads_request,
    model_list,
    model_object,
    shown,
    sse_event,
)

logger = logging.getLogger("langchain_moa.server")

_PING_S = 15
_CLIENT_CLOSED = 499  # logged only: the client is gone, nothing is sent


class _Server:
    """The routes' shared state: ensembles, keys, limits."""

    def __init__(
        self,
        ensembles: Mapping[str, MoAChatModel],
        keys: KeyChecker,
        settings: ServerSettings,
    ) -> None:
        self.ensembles = dict(ensembles)
        self.keys = keys
        self.settings = settings
        self.slots = CallerSlots(settings.max_concurrency_per_key)
        self.created = int(time.time())

    # -- checks --------------------------------------------------------------

    def caller(self, request: Request) -> str:
        caller = self.keys.caller(request.headers.get("authorization"))
        if caller is not None:
            return caller
        given = request.headers.get("authorization")
        message = (
            "Incorrect API key provided."
            if given
            else "You didn't provide an API key. Send it in an Authorization header "
            "using Bearer auth (Authorization: Bearer YOUR_KEY)."
        )
        raise ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def ensemble(self, name: Any) -> MoAChatModel:
        if isinstance(name, str) and name in self.ensembles:
            return self.ensembles[name]
        message = (
            f"The model {shown(name)} does not exist; GET /v1/models lists the served ensembles."
        )
        raise ApiError(404, message, param="model", code="model_not_found")

    async def read_request(self, request: Request) -> ChatRequest:
        """The request's body, decoded and checked: every client error is raised here."""
        settings = self.settings
        raw = await read_body(request, settings.max_body_bytes, settings.body_timeout)
        try:
            body = loads_request(raw)
            if isinstance(body, dict):
                if "model" in body and isinstance(body["model"], str):
                    self.ensemble(body["model"])
                messages = body.get("messages")
                if isinstance(messages, list) and len(messages) > settings.max_messages:
                    raise too_large("the number of messages", settings.max_messages, "messages")
            return parse_chat_request(body)
        except RequestError as error:
            raise ApiError(400, error.message, param=error.param) from None

    def prepare(
        self, chat: ChatRequest, llm: MoAChatModel
    ) -> Runnable[LanguageModelInput, BaseMessage]:
        """The ensemble bound to the request's tools and arguments (400 if it refuses them)."""
        if llm.aggregation == "rank" and chat.tools:
            message = f"{chat.model} ranks proposals (aggregation='rank') and cannot call tools"
            raise ApiError(400, message, param="tools")
        try:
            return chat.runnable(llm)
        except RequestError as error:
            raise ApiError(400, error.message, param=error.param) from None

    def take_slot(self, caller: str) -> Callable[[], None]:
        """A slot of ``caller``'s concurrency budget, and the function that gives it back."""
        release = self.slots.try_acquire(caller)
        if release is None:
            retry = str(self.settings.retry_after_s)
            message = (
                f"Too many requests in progress for this key (at most "
                f"{self.settings.max_concurrency_per_key}); retry after {retry} s."
            )
            raise ApiError(429, message, headers={"Retry-After": retry})
        return release

    # -- routes ----------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        self.caller(request)
        owned_by = self.settings.owned_by
        entries = [model_object(n, owned_by=owned_by, created=self.created) for n in self.ensembles]
        return JSONResponse(model_list(entries))

    async def model(self, request: Request) -> Response:
        self.caller(request)
        name = request.path_params["model"]
        self.ensemble(name)
        owned_by = self.settings.owned_by
        return JSONResponse(model_object(name, owned_by=owned_by, created=self.created))

    async def chat(self, request: Request) -> Response:
        caller = self.caller(request)
        chat = await self.read_request(request)
        runnable = self.prepare(chat, self.ensemble(chat.model))
        release = self.take_slot(caller)  # given back when the run ends, however it ends
        try:
            run = EnsembleRun(
                runnable,
                chat.messages,
                stream=chat.stream,
                timeout=self.settings.request_timeout,
                on_done=release,
            )
        except BaseException:
            release()
            raise
        try:
            return await self._answer(request, chat, run)
        except BaseException:
            run.cancel()  # the streamed response owns the run once it is returned
            raise

    async def _answer(self, request: Request, chat: ChatRequest, run: EnsembleRun) -> Response:
        response_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        try:
            first = await run.next_unless_gone(request.receive)
        except ClientGoneError:
            logger.info("%s %s: client disconnected, run cancelled", _CLIENT_CLOSED, chat.model)
            return Response(status_code=_CLIENT_CLOSED)
        except Exception as error:
            raise self._failed(error) from None
        details = self.settings.include_moa_details
        expose = self.settings.expose_upstream
        if not chat.stream:
            assert isinstance(first, AIMessage)
            body = completion(
                first,
                response_id=response_id,
                created=created,
                model=chat.model,
                details=details,
                expose_upstream=expose,
            )
            return JSONResponse(body)
        writer = ChunkWriter(
            response_id=response_id,
            created=created,
            model=chat.model,
            include_usage=chat.include_usage,
            details=details,
            expose_upstream=expose,
        )
        return EventSourceResponse(
            self._events(run, first, writer),
            ping=_PING_S,
            headers={"Cache-Control": "no-cache"},
        )

    def _failed(self, error: BaseException) -> ApiError:
        answer = upstream_error(
            error, self.settings.request_timeout, expose_upstream=self.settings.expose_upstream
        )
        level = logging.ERROR if answer.status == 500 else logging.WARNING
        logger.log(level, "%s: %s", answer.status, describe_error(error))
        return answer

    async def _events(
        self, run: EnsembleRun, first: Any, writer: ChunkWriter
    ) -> AsyncIterator[bytes]:
        """The SSE stream; leaving it early (a disconnect) cancels the run."""
        try:
            chunk = first
            while chunk is not None:
                for event in writer.chunks(chunk):
                    yield sse_event(event)
                try:
                    chunk = await run.next()
                except Exception as error:
                    yield sse_event(self._failed(error).body())
                    return
            for event in writer.closing():
                yield sse_event(event)
            yield SSE_DONE
        finally:
            run.cancel()


def create_app(
    ensembles: Mapping[str, MoAChatModel],
    *,
    api_keys: Sequence[str] = (),
    settings: ServerSettings | None = None,
) -> FastAPI:
    """An ASGI app serving ensembles over OpenAI's Chat Completions API.

    Routes: ``POST /v1/chat/completions`` (plain, and SSE streaming with
    ``stream_options.include_usage``), ``GET /v1/models``,
    ``GET /v1/models/{model}`` and ``GET /health`` (no key needed); a path
    with a trailing slash is not redirected but answered 404. Errors are
    OpenAI-style bodies: 400 (the field at fault in ``param``), 401, 404,
    405, 408 (the body came too slowly), 413, 429 (with ``Retry-After``), 502
    when proposers or the aggregator fail upstream, 504 on timeouts, and 500
    (logged once, masked) for anything unexpected. Every client error is
    answered before the request takes a slot of its key's concurrency budget.

    Example:
        ```python
        import uvicorn
        from langchain_moa.server import create_app

        app = create_app({"moa": llm}, api_keys=["a-long-random-key"])
        uvicorn.run(app, host="127.0.0.1", port=8000)
        ```

    Args:
        ensembles: The ensembles, by the model name clients ask for.
        api_keys: Bearer keys clients must send (none: no authentication;
            ``moa serve`` then only listens on loopback).
        settings: Limits and switches (default: :class:`ServerSettings()`).

    Returns:
        The FastAPI app.

    Raises:
        ValueError: No ensembles, or an entry that is not a ``MoAChatModel``.
    """
    if not ensembles:
        msg = "create_app needs at least one ensemble"
        raise ValueError(msg)
    for name, llm in ensembles.items():
        if not isinstance(llm, MoAChatModel):
            msg = f"ensemble {name!r} is a {type(llm).__name__}, not a MoAChatModel"
            raise ValueError(msg)
    server = _Server(ensembles, KeyChecker(api_keys), settings or ServerSettings())
    app = FastAPI(
        title="langchain-moa",
        summary="Mixture-of-Agents ensembles over OpenAI's Chat Completions API",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,  # a redirect would be built from the client's Host header
    )
    app.add_middleware(InternalErrors)
    app.add_api_route("/v1/chat/completions", server.chat, methods=["POST"])
    app.add_api_route("/v1/models", server.models, methods=["GET"])
    app.add_api_route("/v1/models/{model:path}", server.model, methods=["GET"])
    app.add_api_route("/health", _health, methods=["GET"])

    async def api_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, ApiError)
        return error.response()

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        reason = "no such route" if error.status_code == 404 else str(error.detail)
        answer = ApiError(error.status_code, f"{reason}: {request.method} {request.scope['path']}")
        answer.headers.update(error.headers or {})
        return answer.response()

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.state.moa = server
    return app


async def _health() -> dict[str, str]:
    return {"status": "ok"}
