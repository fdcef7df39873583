"""Checks of a call's input, made before any provider is called."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import BaseMessage, ChatMessage, HumanMessage

from langchain_moa.inner_models import is_inner_model

MAX_LAYERS = 50
"""Most layers an ensemble may have (each is a full round of model calls)."""

CALL_KWARGS = frozenset(
    {
        # Applied to the aggregator, which writes the final answer.
        "stop",
        "temperature",
        "max_tokens",
        "max_completion_tokens",
        "top_p",
        "seed",
        "response_format",
        "logprobs",
        "top_logprobs",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "reasoning_effort",
        "service_tier",
        "extra_body",
        "user",
        # Set by bind_tools / with_structured_output.
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "strict",
        "structured_output",
        # Set by LangChain itself when streaming.
        "stream",
        # The call's own budget (see MoAChatModel.max_cost_usd / max_total_tokens).
        "max_cost_usd",
        "max_total_tokens",
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
    if not any(_from_user(m) for m in messages):
        msg = "the conversation has no user message: the proposers would have nothing to answer"
        raise ValueError(msg)
    for position, message in enumerate(messages):
        _check_encodable(position, message)
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


def _from_user(message: BaseMessage) -> bool:
    if isinstance(message, ChatMessage):
        return message.role == "user"
    return isinstance(message, HumanMessage)


def _check_encodable(position: int, message: BaseMessage) -> None:
    """Refuse text no provider can receive (lone surrogates cannot be UTF-8)."""
    try:
        json.dumps(message.content, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        msg = (
            f"message {position} ({message.type}) holds text that is not valid Unicode "
            f"(a lone surrogate at character {error.start}); it cannot be sent to a provider"
        )
        raise ValueError(msg) from None


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
            f"apply to the aggregator and are: {', '.join(sorted(CALL_KWARGS - {'stream'}))} "
            "(set temperature/max_tokens on the ensemble to apply them to every inner call)"
        )
        raise TypeError(msg)
    stop = kwargs.get("stop", stop)
    if stop is not None and (isinstance(stop, str) or not all(isinstance(s, str) for s in stop)):
        msg = f"stop must be a list of strings, got {stop!r}"
        raise TypeError(msg)
    check_generation_arguments(kwargs)


def _number(name: str, value: Any, *, low: float, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        noun = "an integer" if integer else "a number"
        msg = f"{name} must be {noun}, got {value!r}"
        raise TypeError(msg)
    if not math.isfinite(value) or value < low:
        msg = f"{name} must be a finite number >= {low:g}, got {value!r}"
        raise ValueError(msg)


def check_generation_arguments(kwargs: Mapping[str, Any]) -> None:
    """Refuse generation arguments no provider would accept, before any call.

    Raises:
        TypeError: A value of the wrong type (``temperature="hot"``, ``seed=object()``).
        ValueError: A value out of range (``temperature=nan``, ``max_tokens=-1``).
    """
    checks: dict[str, dict[str, Any]] = {
        "temperature": {"low": 0},
        "top_p": {"low": 0},
        "frequency_penalty": {"low": -2},
        "presence_penalty": {"low": -2},
        "max_tokens": {"low": 1, "integer": True},
        "max_completion_tokens": {"low": 1, "integer": True},
        "top_logprobs": {"low": 0, "integer": True},
        "seed": {"low": -(2**63), "integer": True},
        "max_total_tokens": {"low": 1, "integer": True},
        "max_cost_usd": {"low": 0},
    }
    for name, bounds in checks.items():
        if kwargs.get(name) is not None:
            _number(name, kwargs[name], **bounds)


def check_line_up(values: Mapping[str, Any]) -> None:
    """Refuse proposers and aggregators that are not chat models, naming where.

    Raises:
        ValueError: No proposers, an empty layer, models mixed with lists, or an
            entry that is not a chat model (or a runnable wrapping one).
    """
    proposers = values.get("proposers")
    if is_inner_model(proposers) or not isinstance(proposers, Sequence):
        msg = "proposers must be a list of chat models or a list of lists of chat models"
        raise ValueError(msg)
    if not proposers:
        msg = "proposers is empty: give at least one proposer model"
        raise ValueError(msg)
    nested = [isinstance(p, Sequence) and not isinstance(p, str) for p in proposers]
    if any(nested) and not all(nested):
        msg = "proposers mixes models and lists: give a list of models or a list of lists"
        raise ValueError(msg)
    layers = proposers if all(nested) else [proposers]
    for number, layer in enumerate(layers, 1):
        if not layer:
            msg = f"proposer layer {number} is empty: every layer needs a proposer"
            raise ValueError(msg)
        for position, model in enumerate(layer):
            if not is_inner_model(model):
                where = (
                    f"layer {number}, position {position}"
                    if all(nested)
                    else f"position {position}"
                )
                msg = f"proposer at {where} is a {type(model).__name__}, not a chat model"
                raise ValueError(msg)
    for name in ("aggregator", "fallback_aggregator"):
        model = values.get(name)
        if name in values and model is not None and not is_inner_model(model):
            msg = f"{name} is a {type(model).__name__}, not a chat model"
            raise ValueError(msg)


def check_controls(model: Any) -> None:
    """Refuse cost-control settings that cannot work together, naming the fix.

    Raises:
        ValueError: ``select_references`` without what its strategy needs, or a
            selection model that is not a chat model.
    """
    k = model.select_references
    strategy = model.selection_strategy
    if k is not None and strategy == "diverse" and model.selection_embeddings is None:
        msg = (
            'select_references with selection_strategy="diverse" needs selection_embeddings '
            '(any LangChain Embeddings), or choose selection_strategy="judge" or "first"'
        )
        raise ValueError(msg)
    if k is not None and strategy == "judge" and model.selection_judge is None:
        msg = (
            'select_references with selection_strategy="judge" needs selection_judge (a chat model)'
        )
        raise ValueError(msg)
    judge = model.selection_judge
    if judge is not None and not is_inner_model(judge):
        msg = f"selection_judge is a {type(judge).__name__}, not a chat model"
        raise ValueError(msg)
    if k is not None and strategy == "first" and k < model.min_proposers:
        msg = (
            f'select_references={k} with selection_strategy="first" keeps fewer answers than '
            f"min_proposers={model.min_proposers} requires"
        )
        raise ValueError(msg)
