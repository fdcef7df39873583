"""Checks of a call's input, made before any provider is called."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage

CALL_KWARGS = frozenset(
    {
        # Applied to the aggregator, which writes the final answer.
        "stop",
        "temperature",
        "max_tokens",
        "top_p",
        "seed",
        "response_format",
        # Set by bind_tools / with_structured_output.
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "strict",
        "structured_output",
        # Set by LangChain itself when streaming.
        "stream",
    }
)
"""Per-call keyword arguments ``MoAChatModel`` accepts."""

CONTENT_BLOCK_TYPES = frozenset(
    {
        "text",
        "image",
        "image_url",
        "file",
        "audio",
        "input_audio",
        "video",
        "tool_use",
        "thinking",
        "reasoning",
        "tool_call",
        "non_standard",
        "text-plain",
    }
)
"""Content block types that may be passed on to the inner models."""


def check_conversation(messages: Sequence[BaseMessage]) -> None:
    """Refuse input no inner model can answer, with a message naming the problem.

    Raises:
        ValueError: The list is empty, has no user message, or holds a content
            block of an unknown shape or type.
    """
    if not messages:
        msg = "MoAChatModel got an empty message list: give at least one message"
        raise ValueError(msg)
    if not any(isinstance(m, HumanMessage) for m in messages):
        msg = "the conversation has no user message: the proposers would have nothing to answer"
        raise ValueError(msg)
    for position, message in enumerate(messages):
        if isinstance(message.content, str):
            continue
        for block in message.content:
            if isinstance(block, str):
                continue
            kind = block.get("type") if isinstance(block, Mapping) else None
            if kind not in CONTENT_BLOCK_TYPES:
                msg = (
                    f"message {position} ({message.type}) has an unsupported content block "
                    f"{_describe(block)}; supported types: {', '.join(sorted(CONTENT_BLOCK_TYPES))}"
                )
                raise ValueError(msg)


def _describe(block: Any) -> str:
    if isinstance(block, Mapping):
        return f"of type {block.get('type')!r}"
    return f"of Python type {type(block).__name__}"


def check_call_kwargs(kwargs: Mapping[str, Any], stop: Any = None) -> None:
    """Refuse per-call keyword arguments the ensemble cannot honour.

    Raises:
        TypeError: ``model=`` (an ensemble has no single model), an unknown
            argument, or ``stop`` that is not a list of strings.
    """
    if "model" in kwargs:
        msg = (
            "MoAChatModel has no single model to override with model=...; "
            "configure the proposers and the aggregator instead"
        )
        raise TypeError(msg)
    unknown = sorted(set(kwargs) - CALL_KWARGS)
    if unknown:
        msg = (
            f"MoAChatModel got unsupported call arguments {unknown}; per-call arguments "
            f"(applied to the aggregator) are: {', '.join(sorted(CALL_KWARGS - {'stream'}))}"
        )
        raise TypeError(msg)
    stop = kwargs.get("stop", stop)
    if stop is not None and (isinstance(stop, str) or not all(isinstance(s, str) for s in stop)):
        msg = f"stop must be a list of strings, got {stop!r}"
        raise TypeError(msg)
