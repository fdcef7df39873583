"""One inner model call, as a graph node makes it: sync or async, streamed or not.

Every call goes through ``resilience`` (retries, timeouts, the concurrency
bound, cancellation). A call made on an event loop, the caller's or the sync
path's background loop, uses a copy of its model with that loop's own HTTP
client (``loop_clients``); on the sync path, models for which that cannot be
done run in a worker thread. A streamed answer is written to the
graph's stream chunk by chunk; once content went out it can no longer be
retried or handed to a fallback, and a failure then says so and keeps the
partial text. An answer that is empty, or that ends without the provider
saying it is complete, is a failure, not a success.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.utils import message_chunk_to_message
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import merge_configs

from langchain_moa.events import AnswerToken
from langchain_moa.loop_clients import on_running_loop, uses_loop_clients
from langchain_moa.resilience import CallLimits, call_async, call_in_thread, call_sync

# LangGraph's own entries of a node's ``configurable``; not settings of the
# inner models (a configurable ``init_chat_model(configurable_fields="any")``
# would take them as model parameters and send them to the provider).
_LANGGRAPH_KEYS = frozenset({"checkpoint_id", "checkpoint_map", "checkpoint_ns", "thread_id"})


def inner_config(
    config: RunnableConfig, run_name: str, metadata: dict[str, Any], tags: tuple[str, ...]
) -> RunnableConfig:
    """The config of an inner model run: its name, metadata and tags under ``config``.

    LangGraph's own keys (``__pregel_*``, checkpoint and thread ids) are left
    out of ``configurable``.
    """
    inner = merge_configs(
        config, {"run_name": run_name, "metadata": metadata, "tags": ["moa:inner", *tags]}
    )
    inner["configurable"] = {
        key: value
        for key, value in inner.get("configurable", {}).items()
        if not key.startswith("__pregel_") and key not in _LANGGRAPH_KEYS
    }
    return inner


class EmptyAnswerError(ValueError):
    """The provider answered with no content and no tool call."""


class IncompleteAnswerError(ValueError):
    """The provider's answer ended without saying it was complete (no ``finish_reason``)."""


class StreamBrokenError(Exception):
    """A streamed answer failed after some of it had been streamed to the caller.

    Attributes:
        error: The cause.
        partial_text: What had been streamed.
    """

    def __init__(self, error: BaseException, partial_text: str) -> None:
        super().__init__(
            f"{type(error).__name__} after {len(partial_text)} characters had already been streamed"
        )
        self.error = error
        self.partial_text = partial_text


def checked_answer(answer: BaseMessage) -> BaseMessage:
    """Return ``answer`` if it is a usable, complete answer.

    Raises:
        EmptyAnswerError: No text, no tool call, nothing parsed.
        IncompleteAnswerError: An OpenAI-protocol answer without ``finish_reason``.
    """
    has_calls = isinstance(answer, AIMessage) and bool(answer.tool_calls)
    parsed = answer.additional_kwargs.get("parsed") is not None
    if not answer.text.strip() and not has_calls and not parsed:
        msg = "the provider returned an empty answer (no content, no tool call)"
        raise EmptyAnswerError(msg)
    metadata = answer.response_metadata
    if metadata.get("model_provider") == "openai" and not metadata.get("finish_reason"):
        msg = "the provider's answer ended without a finish_reason (truncated?)"
        raise IncompleteAnswerError(msg)
    return answer


def _no_choices() -> EmptyAnswerError:
    """The error for an answer without any choice.

    LangChain's ``invoke`` indexes the first generation, so a provider that
    answers ``"choices": []`` surfaces as an ``IndexError``.
    """
    return EmptyAnswerError("the provider returned an empty answer (no choices)")


def _visible(chunk: AIMessageChunk) -> bool:
    return bool(chunk.content) or bool(chunk.tool_call_chunks)


@dataclass
class InnerCall:
    """One model's call with its messages, config and limits.

    Attributes:
        build: Makes the runnable (tools and arguments bound) from a model.
        model: The model as configured.
        messages: What the model reads.
        config: The inner run's config (name, tags, callbacks).
        limits: Retries, timeouts, the concurrency bound, cancellation.
        writer: Where streamed chunks go (``None``: not streamed).
        started: When the call started (``perf_counter``).
    """

    build: Callable[[Runnable], Runnable]
    model: Runnable
    messages: list[BaseMessage]
    config: RunnableConfig
    limits: CallLimits
    writer: Callable[[Any], None] | None = None
    started: float = field(default_factory=time.perf_counter)
    streamed: AIMessageChunk | None = None

    def run_async(self) -> Any:
        """The awaitable of the call on the caller's event loop."""
        return self._guarded(call_async(lambda: self._acall(self.model), self.limits))

    async def runnable_on_loop(self, model: Runnable | None = None) -> Runnable:
        """The runnable of one attempt on the running loop (``model``: the call's own).

        Built from the model's copy with the loop's own HTTP client.
        """
        return self.build(await on_running_loop(self.model if model is None else model))

    async def _guarded(self, call: Any) -> BaseMessage:
        try:
            return await call
        except Exception as error:
            broken = self._broken(error)
            if broken is error:
                raise
            raise broken from error

    def run_sync(self, background: Runnable | None) -> BaseMessage:
        """Run the call from a sync caller.

        Args:
            background: The model to run on the background loop, or ``None``
                (then the call runs in a worker thread).
        """
        try:
            if background is not None:
                return call_sync(lambda: self._acall(background), self.limits)
            runnable = self.build(self.model)
            return call_in_thread(lambda: self._call(runnable), self.limits)
        except Exception as error:
            broken = self._broken(error)
            if broken is error:
                raise
            raise broken from error

    def _broken(self, error: Exception) -> Exception:
        """``error``, as a ``StreamBrokenError`` if part of the answer went out.

        A timeout, deadline or cancellation ends a stream from outside it, so
        the stream's own consumer cannot mark the failure as coming too late
        for a retry or a fallback.
        """
        streamed = _streamed_text(self.streamed)
        if isinstance(error, StreamBrokenError) or not streamed:
            return error
        return StreamBrokenError(error, streamed)

    async def _acall(self, model: Runnable) -> BaseMessage:
        runnable = await self.runnable_on_loop(model)
        if self.writer is None:
            try:
                answer = await runnable.ainvoke(self.messages, self.config)
            except IndexError as error:
                raise _no_choices() from error
            return checked_answer(answer)
        return await _aconsume(runnable.astream(self.messages, self.config), self)

    def _call(self, runnable: Runnable) -> BaseMessage:
        if self.writer is None:
            try:
                answer = runnable.invoke(self.messages, self.config)
            except IndexError as error:
                raise _no_choices() from error
            return checked_answer(answer)
        return _consume(runnable.stream(self.messages, self.config), self)

    def chunk(self, total: AIMessageChunk | None, chunk: AIMessageChunk) -> AIMessageChunk:
        """Pass one streamed chunk on; return the running total."""
        if _visible(chunk) and self.limits.first_token is not None:
            self.limits.first_token.set()
        if self.limits.cancelled is not None and self.limits.cancelled.is_set():
            msg = "the caller went away"
            raise _Stopped(msg)
        self.writer(AnswerToken(chunk))  # type: ignore[misc]
        self.streamed = chunk if total is None else total + chunk
        return self.streamed


class _Stopped(Exception):
    """The caller went away while a stream was being read."""


def _streamed_text(total: AIMessageChunk | None) -> str:
    """What of a streamed answer reached the caller (``""``: nothing visible)."""
    return total.text if total is not None and _visible(total) else ""


def _finished(total: AIMessageChunk | None, error: BaseException | None) -> BaseMessage:
    """The streamed answer, or the error to raise for it."""
    streamed = _streamed_text(total)
    try:
        if error is not None:
            raise error
        if total is None:
            msg = "the provider's stream ended without any chunk"
            raise EmptyAnswerError(msg)
        return checked_answer(message_chunk_to_message(total))
    except Exception as failure:
        if streamed:
            raise StreamBrokenError(failure, streamed) from failure
        raise


async def _aconsume(stream: AsyncIterator[AIMessageChunk], call: InnerCall) -> BaseMessage:
    total: AIMessageChunk | None = None
    try:
        async for chunk in stream:
            total = call.chunk(total, chunk)
    except Exception as error:
        return _finished(total, error)
    return _finished(total, None)


def _consume(stream: Iterator[AIMessageChunk], call: InnerCall) -> BaseMessage:
    total: AIMessageChunk | None = None
    try:
        for chunk in stream:
            total = call.chunk(total, chunk)
    except Exception as error:
        return _finished(total, error)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    return _finished(total, None)


class BackgroundModels:
    """Which inner models the sync path runs on its background loop."""

    def for_model(self, model: Runnable) -> Runnable | None:
        """``model`` if it runs on the background loop (with its own client), else ``None``."""
        return model if uses_loop_clients(model) else None
