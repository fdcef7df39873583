"""Small in-process chat models for pure-logic unit tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
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
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "recording"

    def _answer(self, messages: list[BaseMessage], stop: list[str] | None = None) -> AIMessage:
        with self._lock:
            self.received.append(list(messages))
            self.stops.append(stop)
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
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages, stop))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        await asyncio.sleep(self.delay)
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages, stop))])

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
        yield from self._chunks(self._answer(messages, stop))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        await asyncio.sleep(self.delay)
        for chunk in self._chunks(self._answer(messages, stop)):
            yield chunk


class ToolTakingChatModel(RecordingChatModel):
    """A ``RecordingChatModel`` that takes tools, recording each ``bind_tools`` call."""

    tool_bindings: list[dict[str, Any]] = Field(default_factory=list)
    """``{"tools": [...], **kwargs}`` of every ``bind_tools`` call, in order."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        self.tool_bindings.append({"tools": list(tools), **kwargs})
        return self
