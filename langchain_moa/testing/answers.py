r"""Deterministic answers of the OpenAI simulator, built from the request body.

Everything here is pure (no I/O, no clock, no randomness), so it can be unit
tested on its own; :mod:`langchain_moa.testing.server` only adds HTTP around it.
This module turns a request into a turn and its OpenAI payloads; the texts,
tokens and references are :mod:`langchain_moa.testing.answer_texts`, the JSON
values :mod:`langchain_moa.testing.schema_values` (both re-exported here), the
wire format :mod:`langchain_moa.wire`.

Text answers, references and tokens
-----------------------------------
A text answer is ``"{model} answers: {question}"``, ``"{model} read {n}
references [{w1}, {w2}, ...] and answers: {question}"`` after a reference
block (an aggregation strategy's request shows each reference's length too,
see :func:`strategy_answer`), or ``"{model} used {tool_name} -> {tool_result_text} and answers:
{question}"`` after a tool result; :mod:`langchain_moa.testing.answer_texts`
gives the details, the reference block's format and what a token is. Streams
send one token per chunk; ``max_tokens`` / ``max_completion_tokens`` cut the
answer to that many tokens. A tool call answer counts one token for the
function name plus the tokens of its JSON arguments.

Tools and structured output
---------------------------
With function ``tools`` the decision follows ``tool_choice``: ``"none"`` or no
tools gives text; ``"required"`` or a named function always calls a tool;
``"auto"`` (the default) calls a tool when the last message is a user message
and answers in text otherwise (for instance after a tool result). The tool
called is the named one, else the tool whose name occurs (as a whole word)
earliest in the last user text, else the first tool. Its arguments, as well as
a ``json_schema`` ``response_format`` document, come from
:func:`generate_from_schema`. A ``json_object`` response format gives the keys
named in quotes in the last user text (``'setup'`` and ``'punchline'``) with
string values, else ``{"answer": <text answer>}``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from langchain_moa.testing.answer_texts import (
    NON_TEXT_PART_TOKENS,
    REFERENCES_MARKER,
    count_tokens,
    find_references,
    last_user_text,
    parse_references,
    prompt_tokens,
    simulated_answer,
    split_tokens,
    strategy_answer,
)
from langchain_moa.testing.schema_values import generate_from_schema, quoted_strings
from langchain_moa.wire import (
    RequestError,
    assistant_message,
    chunk_body,
    chunk_choice,
    completion_body,
    content_text,
    error_body,
    function_tools,
    named_choice,
    tool_call_object,
    validate_request,
)

__all__ = [
    "NON_TEXT_PART_TOKENS",
    "REFERENCES_MARKER",
    "RequestError",
    "SimulatedTurn",
    "ToolCall",
    "apply_stop",
    "choose_tool",
    "completion_response",
    "content_text",
    "count_tokens",
    "error_body",
    "find_references",
    "generate_from_schema",
    "json_object_answer",
    "last_user_text",
    "pad_answer",
    "parse_references",
    "prompt_tokens",
    "quoted_strings",
    "request_digest",
    "simulate",
    "simulated_answer",
    "split_tokens",
    "strategy_answer",
    "stream_chunks",
    "validate_request",
]

SYSTEM_FINGERPRINT = "fp_simulator"
"""The ``system_fingerprint`` of every simulated answer."""

_TRANSPORT_KEYS = frozenset({"stream", "stream_options"})
_QUOTED_KEY_RE = re.compile(r"(?<!\w)['\"\u201c\u2018]([A-Za-z_][\w\-]*)['\"\u201d\u2019](?!\w)")


def json_object_answer(model: str, request_body: Mapping[str, Any]) -> dict[str, Any]:
    """Return the JSON object of a ``{"type": "json_object"}`` response format.

    Args:
        model: The model name.
        request_body: The chat-completion request body.

    Returns:
        The keys named in quotes in the last user text with string values
        ``"simulated {key}"``; without such keys ``{"answer": <text answer>}``.
    """
    messages = [m for m in request_body.get("messages") or [] if isinstance(m, Mapping)]
    keys = list(
        dict.fromkeys(match.group(1) for match in _QUOTED_KEY_RE.finditer(last_user_text(messages)))
    )
    if keys:
        return {key: f"simulated {key}" for key in keys}
    return {"answer": simulated_answer(model, request_body)}


def request_digest(request_body: Mapping[str, Any]) -> str:
    """Return a stable hex digest of a request body.

    Args:
        request_body: The chat-completion request body.

    Returns:
        A 64-character SHA-256 hex digest of the canonical JSON of the body,
        ignoring ``stream`` and ``stream_options`` (so a streamed and a plain
        request for the same conversation get the same ids).
    """
    relevant = {key: value for key, value in request_body.items() if key not in _TRANSPORT_KEYS}
    canonical = json.dumps(relevant, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def choose_tool(request_body: Mapping[str, Any]) -> dict[str, Any] | None:
    """Decide whether the simulated model calls a tool, and which.

    Args:
        request_body: A valid chat-completion request body.

    Returns:
        The ``function`` object of the tool to call, or ``None`` to answer
        with content.
    """
    tools = function_tools(request_body)
    choice = request_body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    named = named_choice(choice)
    if named is not None:
        return next((tool for tool in tools if tool["name"] == named), None)
    messages = [m for m in request_body.get("messages") or [] if isinstance(m, Mapping)]
    if choice != "required" and (not messages or messages[-1].get("role") != "user"):
        return None
    text = last_user_text(messages)
    best: tuple[int, int] | None = None
    chosen = tools[0]
    for tool in tools:
        match = re.search(rf"(?<!\w){re.escape(tool['name'])}(?!\w)", text)
        if match:
            key = (match.start(), -len(tool["name"]))
            if best is None or key < best:
                best, chosen = key, tool
    return chosen


@dataclass(frozen=True)
class ToolCall:
    """A simulated tool call.

    Attributes:
        id: The call id, ``call_<hex>``.
        name: The function name.
        arguments: The JSON-encoded arguments (possibly cut by ``max_tokens``).
    """

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class SimulatedTurn:
    """The simulated assistant turn for one request.

    Attributes:
        model: The requested model name.
        content: The answer text, or ``None`` for a tool call.
        tool_call: The tool call, or ``None`` for a content answer.
        finish_reason: ``"stop"``, ``"length"`` or ``"tool_calls"``.
        prompt_tokens: Simulated prompt tokens.
        completion_tokens: Simulated completion tokens (one per streamed token).
    """

    model: str
    content: str | None
    tool_call: ToolCall | None
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def usage(self) -> dict[str, int]:
        """The OpenAI ``usage`` object."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def _stop_sequences(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list):
        return [s for s in stop if isinstance(s, str) and s]
    return []


def apply_stop(text: str, stop: Any) -> str:
    """Cut a text before the first occurrence of any stop sequence.

    Args:
        text: The answer.
        stop: A string, a list of strings or ``None``.

    Returns:
        The text up to (excluding) the earliest stop sequence, or the text.
    """
    positions = [text.find(s) for s in _stop_sequences(stop)]
    positions = [p for p in positions if p >= 0]
    return text[: min(positions)] if positions else text


def _max_tokens(request_body: Mapping[str, Any]) -> int | None:
    limits = [
        value
        for value in (
            request_body.get("max_completion_tokens"),
            request_body.get("max_tokens"),
        )
        if isinstance(value, int) and not isinstance(value, bool)
    ]
    return min(limits) if limits else None


def simulate(request_body: Mapping[str, Any]) -> SimulatedTurn:
    """Compute the simulated assistant turn for a valid request.

    Args:
        request_body: A chat-completion request body that passed
            :func:`validate_request`.

    Returns:
        The turn: a tool call, a JSON document (``response_format``) or the
        text of :func:`simulated_answer`, cut by ``stop`` and ``max_tokens``.
    """
    model = str(request_body["model"])
    messages = [m for m in request_body["messages"] if isinstance(m, Mapping)]
    prompt = prompt_tokens(messages)
    limit = _max_tokens(request_body)
    tool = choose_tool(request_body)
    if tool is not None:
        arguments = json.dumps(
            generate_from_schema(
                tool.get("parameters"), last_user_text(messages), call_name=tool["name"]
            ),
            ensure_ascii=False,
        )
        tokens = split_tokens(arguments)
        finish_reason = "tool_calls"
        if limit is not None and 1 + len(tokens) > limit:
            tokens = tokens[: limit - 1]
            arguments = "".join(tokens)
            finish_reason = "length"
        call = ToolCall(
            id=f"call_{request_digest(request_body)[:24]}",
            name=tool["name"],
            arguments=arguments,
        )
        return SimulatedTurn(
            model=model,
            content=None,
            tool_call=call,
            finish_reason=finish_reason,
            prompt_tokens=prompt,
            completion_tokens=1 + len(tokens),
        )
    response_format = request_body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        spec = response_format["json_schema"]
        document = generate_from_schema(
            spec.get("schema") or {"type": "object"},
            last_user_text(messages),
            call_name=spec.get("name"),
        )
        content = json.dumps(document, ensure_ascii=False)
    elif response_format.get("type") == "json_object":
        content = json.dumps(json_object_answer(model, request_body), ensure_ascii=False)
    else:
        content = simulated_answer(model, request_body)
    content = apply_stop(content, request_body.get("stop"))
    tokens = split_tokens(content)
    finish_reason = "stop"
    if limit is not None and len(tokens) > limit:
        tokens = tokens[:limit]
        content = "".join(tokens)
        finish_reason = "length"
    return SimulatedTurn(
        model=model,
        content=content,
        tool_call=None,
        finish_reason=finish_reason,
        prompt_tokens=prompt,
        completion_tokens=len(tokens),
    )


def completion_response(turn: SimulatedTurn, *, response_id: str, created: int) -> dict[str, Any]:
    """Build a ``chat.completion`` object.

    Args:
        turn: The simulated turn.
        response_id: The ``id`` field (``chatcmpl-...``).
        created: The ``created`` Unix timestamp.

    Returns:
        The JSON-serialisable response body.
    """
    calls = ()
    if turn.tool_call is not None:
        call = turn.tool_call
        calls = (tool_call_object(call.id, call.name, call.arguments),)
    return completion_body(
        response_id=response_id,
        created=created,
        model=turn.model,
        message=assistant_message(turn.content, calls),
        finish_reason=turn.finish_reason,
        usage=turn.usage,
        system_fingerprint=SYSTEM_FINGERPRINT,
    )


def stream_chunks(
    turn: SimulatedTurn, *, response_id: str, created: int, include_usage: bool
) -> list[dict[str, Any]]:
    """Build the ``chat.completion.chunk`` objects of a streamed answer.

    One chunk per token; the first carries ``role: assistant`` (and, for a tool
    call, the call id and function name), the last content chunk carries the
    ``finish_reason``. With ``include_usage`` every chunk has ``usage: null``
    and a final chunk with empty ``choices`` carries the usage.

    Args:
        turn: The simulated turn.
        response_id: The ``id`` shared by all chunks.
        created: The ``created`` Unix timestamp.
        include_usage: Whether ``stream_options.include_usage`` was set.

    Returns:
        The chunks, to be sent as ``data: <json>`` events before
        ``data: [DONE]``.
    """
    deltas: list[dict[str, Any]] = []
    if turn.tool_call is not None:
        call = turn.tool_call
        deltas.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"index": 0, **tool_call_object(call.id, call.name, "")}],
            }
        )
        deltas.extend(
            {"tool_calls": [{"index": 0, "function": {"arguments": token}}]}
            for token in split_tokens(call.arguments)
        )
    else:
        tokens = split_tokens(turn.content or "") or [""]
        deltas.extend({"content": token} for token in tokens)
        deltas[0] = {"role": "assistant", **deltas[0]}
    common = {
        "response_id": response_id,
        "created": created,
        "model": turn.model,
        "include_usage": include_usage,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    last = len(deltas) - 1
    chunks = [
        chunk_body(
            choices=[chunk_choice(delta, turn.finish_reason if index == last else None)],
            **common,
        )
        for index, delta in enumerate(deltas)
    ]
    if include_usage:
        chunks.append(chunk_body(choices=[], usage=turn.usage, **common))
    return chunks


_FILLER = ("and", "more", "detail")


def pad_answer(
    turn: SimulatedTurn, tokens: int | None, request_body: Mapping[str, Any]
) -> SimulatedTurn:
    """Pad a text answer with filler words to ``tokens`` tokens, then cut it by ``max_tokens``.

    Tool calls, JSON documents (``response_format``) and answers already that
    long are returned unchanged.

    Args:
        turn: The simulated turn.
        tokens: The answer's length in tokens (``None``: unchanged).
        request_body: The request (for ``max_tokens``).

    Returns:
        The padded turn.
    """
    if tokens is None or turn.content is None or request_body.get("response_format"):
        return turn
    words = split_tokens(turn.content)
    if len(words) >= tokens:
        return turn
    body = turn.content if not words or words[-1][-1:].isspace() else turn.content + " "
    filler = [_FILLER[i % len(_FILLER)] for i in range(tokens - len(words))]
    content = body + " ".join(filler)
    finish_reason = turn.finish_reason
    limit = _max_tokens(request_body)
    if limit is not None and tokens > limit:
        content = "".join(split_tokens(content)[:limit])
        finish_reason = "length"
    return replace(
        turn,
        content=content,
        finish_reason=finish_reason,
        completion_tokens=min(tokens, limit or tokens),
    )
