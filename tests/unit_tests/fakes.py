"""Small in-process chat models (and a run recorder) for pure-logic unit tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import UUID

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field, PrivateAttr


class RecordingChatModel(BaseChatModel):
    """Answers ``"<name>: <n>"`` and records every message list it receives."""

    delay: float = 0.0
    fail: bool = False
    input_tokens: int = 3
    output_tokens: int = 5
    received: list[list[BaseMessage]] = Field(default_factory=list)
    stops: list[list[str] | None] = Field(default_factory=list)
    """The ``stop`` of every call, in order."""
    call_kwargs: list[dict[str, Any]] = Field(default_factory=list)
    """The further keyword arguments of every call, in order."""
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "recording"

    def _answer(
        self, messages: list[BaseMessage], stop: list[str] | None = None, **kwargs: Any
    ) -> AIMessage:
        with self._lock:
            self.received.append(list(messages))
            self.stops.append(stop)
            self.call_kwargs.append(kwargs)
            count = len(self.received)
        if self.fail:
            msg = f"{self.name} is down"
            raise RuntimeError(msg)
        return AIMessage(
            content=f"{self.name}: answer {count}",
            usage_metadata={
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "total_tokens": self.input_tokens + self.output_tokens,
            },
            response_metadata={"model_name": self.name, "finish_reason": "stop"},
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        time.sleep(self.delay)
        answer = self._answer(messages, stop, **kwargs)
        return ChatResult(generations=[ChatGeneration(message=answer)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        await asyncio.sleep(self.delay)
        answer = self._answer(messages, stop, **kwargs)
        return ChatResult(generations=[ChatGeneration(message=answer)])

    def _chunks(self, message: AIMessage) -> list[ChatGenerationChunk]:
        words = str(message.content).split(" ")
        chunks = [
            ChatGenerationChunk(message=AIMessageChunk(content=w if i == 0 else " " + w))
            for i, w in enumerate(words)
        ]
        chunks.append(
            ChatGenerationChunk(
                message=AIMessageChunk(
                    content="",
                    usage_metadata=message.usage_metadata,
                    response_metadata=message.response_metadata,
                )
            )
        )
        return chunks

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        time.sleep(self.delay)
        yield from self._chunks(self._answer(messages, stop, **kwargs))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        await asyncio.sleep(self.delay)
        for chunk in self._chunks(self._answer(messages, stop, **kwargs)):
            yield chunk


class ToolTakingChatModel(RecordingChatModel):
    """A ``RecordingChatModel`` that takes tools, recording each ``bind_tools`` call."""

    tool_bindings: list[dict[str, Any]] = Field(default_factory=list)
    """``{"tools": [...], **kwargs}`` of every ``bind_tools`` call, in order."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        self.tool_bindings.append({"tools": list(tools), **kwargs})
        return self


class Runs(BaseCallbackHandler):
    """Records every run's parent, and which runs are chat model runs."""

    def __init__(self) -> None:
        self.parent: dict[UUID, UUID | None] = {}
        self.chat_models: list[UUID] = []

    def on_chain_start(
        self,
        serialized: Any,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self.parent[run_id] = parent_run_id

    def on_chat_model_start(
        self,
        serialized: Any,
        messages: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self.parent[run_id] = parent_run_id
        self.chat_models.append(run_id)

    def inner_model_runs_of(self, root: UUID) -> list[UUID]:
        """The chat model runs nested (at any depth) under ``root``."""

        def under(run_id: UUID) -> bool:
            parent = self.parent.get(run_id)
            return parent is not None and (parent == root or under(parent))

        return [run_id for run_id in self.chat_models if under(run_id)]
