"""A chat-completion request body, checked and mapped onto an ensemble call.

The mapping is what a LangChain caller would write: the messages become
LangChain messages (``convert_to_messages``), ``tools``/``tool_choice``/
``parallel_tool_calls`` go through ``llm.bind_tools(...)``, and the sampling
and format parameters through ``llm.bind(...)``; ``MoAChatModel`` hands them
to the aggregator (see ``langchain_moa.validation.CALL_KWARGS``). Tool
parameters and ``response_format`` schemas must be valid JSON Schemas
(``jsonschema``'s check of the meta-schema), as OpenAI requires.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import BaseMessage, convert_to_messages
from langchain_core.runnables import Runnable

from langchain_moa.chat_model import MoAChatModel
from langchain_moa.validation import check_call_kwargs, check_conversation
from langchain_moa.wire import MAX_TOKENS, RequestError, shown, validate_request

_TRANSPORT = frozenset({"model", "messages", "stream", "stream_options", "n"})
_TOOLING = frozenset({"tools", "tool_choice", "parallel_tool_calls"})
_IGNORED = frozenset({"metadata", "store"})
"""Accepted and not used: they describe how OpenAI keeps a completion."""

_NUMBERS: dict[str, tuple[float, float, bool]] = {
    "temperature": (0, 2, False),
    "top_p": (0, 1, False),
    "frequency_penalty": (-2, 2, False),
    "presence_penalty": (-2, 2, False),
    "seed": (-(2**63), 2**63 - 1, True),
    "max_tokens": (1, MAX_TOKENS, True),
    "max_completion_tokens": (1, MAX_TOKENS, True),
}
_LOGIT_BIAS = 100
"""``logit_bias`` values lie in [-100, 100], as OpenAI documents."""
_STRINGS = frozenset({"user", "reasoning_effort", "service_tier"})
_REFUSED = {
    "logprobs": "log probabilities are not returned by a Mixture-of-Agents ensemble",
    "top_logprobs": "log probabilities are not returned by a Mixture-of-Agents ensemble",
    "functions": "the legacy functions parameter is not supported; use tools",
    "function_call": "the legacy function_call parameter is not supported; use tool_choice",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
}


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat-completion request.

    Attributes:
        model: The requested ensemble's name.
        messages: The conversation as LangChain messages.
        stream: Whether to answer with server-sent events.
        include_usage: Whether a streamed answer ends with a usage chunk.
        tools: The tools, in OpenAI's format.
        tool_choice: ``tool_choice`` as sent, if any.
        parallel_tool_calls: ``parallel_tool_calls`` as sent, if any.
        call_kwargs: Per-call arguments for ``llm.bind(...)``.
    """

    model: str
    messages: list[BaseMessage]
    stream: bool = False
    include_usage: bool = False
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    call_kwargs: dict[str, Any] = field(default_factory=dict)

    def runnable(self, llm: MoAChatModel) -> Runnable[LanguageModelInput, BaseMessage]:
        """The ensemble with this request's tools and arguments bound.

        Args:
            llm: The ensemble.

        Returns:
            ``llm.bind_tools(...)`` (when tools are given) and ``.bind(...)``.

        Raises:
            RequestError: ``bind_tools`` refused the tools.
        """
        runnable: Runnable = llm
        if self.tools:
            try:
                runnable = llm.bind_tools(
                    self.tools,
                    tool_choice=self.tool_choice,
                    parallel_tool_calls=self.parallel_tool_calls,
                )
            except (ValueError, TypeError, KeyError) as error:
                msg = f"the tools cannot be used: {type(error).__name__}: {error}"
                raise RequestError(msg, "tools") from None
        return runnable.bind(**self.call_kwargs) if self.call_kwargs else runnable


def _number(name: str, value: Any) -> float:
    low, high, integer = _NUMBERS[name]
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        noun = "an integer" if integer else "a number"
        msg = f"{name} must be {noun}, got {type(value).__name__}"
        raise RequestError(msg, name)
    # An int is compared as an int: a 400-digit one cannot become a float.
    finite = isinstance(value, int) or math.isfinite(value)
    if not (finite and low <= value <= high):
        msg = f"{name} must be between {low} and {high}, got {shown(value)}"
        raise RequestError(msg, name)
    return value


def _check_known(body: Mapping[str, Any]) -> None:
    for name, value in body.items():
        if name in _REFUSED and value not in (None, False):
            raise RequestError(_REFUSED[name], name)
        if name == "modalities" and value not in (None, ["text"]):
            msg = "only text output is supported (modalities: ['text'])"
            raise RequestError(msg, name)
        known = _TRANSPORT | _TOOLING | _IGNORED | _STRINGS | set(_NUMBERS) | set(_REFUSED)
        if name not in known | {"stop", "response_format", "logit_bias", "modalities"}:
            msg = f"Unrecognized request argument supplied: {name}"
            raise RequestError(msg, name)


def _call_kwargs(body: Mapping[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for name in _NUMBERS:
        if body.get(name) is not None:
            kwargs[name] = _number(name, body[name])
    limits = [
        kwargs.pop(name) for name in ("max_tokens", "max_completion_tokens") if name in kwargs
    ]
    if limits:
        kwargs["max_tokens"] = min(limits)
    for name in _STRINGS:
        value = body.get(name)
        if value is not None:
            if not isinstance(value, str):
                msg = f"{name} must be a string"
                raise RequestError(msg, name)
            kwargs[name] = value
    stop = body.get("stop")
    if stop:
        kwargs["stop"] = [stop] if isinstance(stop, str) else list(stop)
    response_format = body.get("response_format")
    if response_format is not None and response_format.get("type") != "text":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if schema is not None:
            check_schema(schema, "response_format.json_schema.schema")
        kwargs["response_format"] = dict(response_format)
    logit_bias = body.get("logit_bias")
    if logit_bias is not None:
        if not isinstance(logit_bias, Mapping) or not all(
            isinstance(v, (int, float))
            and not isinstance(v, bool)
            and -_LOGIT_BIAS <= v <= _LOGIT_BIAS
            for v in logit_bias.values()
        ):
            msg = f"logit_bias must map token ids to numbers from -{_LOGIT_BIAS} to {_LOGIT_BIAS}"
            raise RequestError(msg, "logit_bias")
        kwargs["logit_bias"] = dict(logit_bias)
    try:
        check_call_kwargs(kwargs)
    except (TypeError, ValueError) as error:
        raise RequestError(str(error)) from None
    return kwargs


def _messages(raw: list[Any]) -> list[BaseMessage]:
    messages: list[BaseMessage] = []
    for index, message in enumerate(raw):
        try:
            messages.extend(convert_to_messages([dict(message)]))
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            msg = f"messages[{index}] is not a valid {message.get('role')} message: {error}"
            raise RequestError(msg, f"messages[{index}]") from None
    try:
        check_conversation(messages)
    except ValueError as error:
        raise RequestError(str(error), "messages") from None
    return messages


def check_schema(schema: Any, param: str, *, object_type: bool = False) -> None:
    """Refuse what is not a valid JSON Schema (as OpenAI does), before any provider sees it.

    Args:
        schema: The schema as sent.
        param: Its field, for the error.
        object_type: The schema must say ``"type": "object"`` (or be ``{}``:
            no parameters), as function parameters must.

    Raises:
        RequestError: An invalid schema; the message gives the first reason.
    """
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as error:
        msg = f"{param} is not a valid JSON Schema: {error.message[:200]}"
        raise RequestError(msg, param) from None
    if object_type and schema and schema.get("type") != "object":
        msg = f"{param} must be a schema of type 'object', got type {shown(schema.get('type'))}"
        raise RequestError(msg, param)


def _tools(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools") or []
    for index, tool in enumerate(tools):
        if tool.get("type") != "function":
            kind = shown(tool.get("type"))
            msg = f"tools[{index}].type {kind} is not supported; use function tools"
            raise RequestError(msg, f"tools[{index}].type")
        parameters = tool["function"].get("parameters")
        if parameters is not None:
            where = f"tools[{index}].function.parameters"
            check_schema(parameters, where, object_type=True)
    return [dict(tool) for tool in tools]


def parse_chat_request(body: Any) -> ChatRequest:
    """Check a request body and map it onto an ensemble call.

    Args:
        body: The decoded JSON body.

    Returns:
        The request.

    Raises:
        RequestError: The body is not a valid request, or asks for something
            an ensemble cannot give; ``param`` names the field.
    """
    body = validate_request(body)
    _check_known(body)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        msg = "stream must be a boolean"
        raise RequestError(msg, "stream")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        msg = "parallel_tool_calls must be a boolean"
        raise RequestError(msg, "parallel_tool_calls")
    include_usage = (body.get("stream_options") or {}).get("include_usage", False)
    if not isinstance(include_usage, bool):
        msg = "stream_options.include_usage must be a boolean"
        raise RequestError(msg, "stream_options.include_usage")
    return ChatRequest(
        model=body["model"],
        messages=_messages(body["messages"]),
        stream=bool(stream),
        include_usage=include_usage,
        tools=_tools(body),
        tool_choice=body.get("tool_choice"),
        parallel_tool_calls=parallel,
        call_kwargs=_call_kwargs(body),
    )
