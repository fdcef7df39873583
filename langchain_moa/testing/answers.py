r"""Deterministic answers of the OpenAI simulator, built from the request body.

Everything here is pure (no I/O, no clock, no randomness), so it can be unit
tested on its own; :mod:`langchain_moa.testing.server` only adds HTTP around it.

Text answers
------------
A text answer shows what the server received: the requested model name and the
*question*, which is the text of the last ``user`` message (text parts of a
list content are concatenated; ``""`` when there is no user message):

* plain: ``"{model} answers: {question}"``
* when a ``system`` (or ``developer``) message contains a Mixture-of-Agents
  reference block: ``"{model} read {n} references [{w1}, {w2}, ...] and
  answers: {question}"`` where ``w1, w2, ...`` are the first words of the
  references, in order, joined by ``", "``. Since every simulated answer starts
  with the answering model's name, the first word of a reference names the
  proposer that wrote it.
* for an aggregation strategy's request (an unfinished reference, a request
  to continue an answer, or the sequential prompt): ``"{model} read {n}
  references [{w1} ({l1} words), {w2} ({l2} words, unfinished), ...] continuing
  an answer of {N} words and answers: {question}"``, so that tests can see what
  each step read (see :func:`strategy_answer`).
* when the last message is a ``tool`` message: ``"{model} used {tool_name} ->
  {tool_result_text} and answers: {question}"`` (this takes precedence over
  references). ``tool_name`` is looked up from the assistant tool call whose id
  matches the tool message's ``tool_call_id`` (else the message's ``name``,
  else ``"tool"``).

Reference block
---------------
The block starts at the marker line ``Responses from models:`` and is followed
by references formatted exactly as ``"\n1. <text>"``, ``"\n2. <text>"``, ...
(numbers counting from 1). A reference may span several lines; parsing is
sequential: reference ``i`` ends where ``"\n{i+1}. "`` starts, and the last one
ends at the end of the system text. See :func:`parse_references`.

Tokens
------
A token is a whitespace-separated word together with the whitespace that
follows it (leading whitespace belongs to the first token), so
``"".join(split_tokens(text)) == text``. Streams send one token per chunk;
``max_tokens`` / ``max_completion_tokens`` cut the answer to that many tokens.
Prompt tokens are the tokens of every message content (text parts; every
non-text part counts as one token) plus the names and arguments of assistant
tool calls. A tool call answer counts one token for the function name plus the
tokens of its JSON arguments.

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
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_moa.prompts import CONTINUATION_PROMPT, DEFAULT_SEQUENTIAL_PROMPT, UNFINISHED_MARKER
from langchain_moa.wire import (
    SYSTEM_ROLES,
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

REFERENCES_MARKER = "Responses from models:"
"""The marker line that starts a Mixture-of-Agents reference block."""

NON_TEXT_PART_TOKENS = 1
"""Prompt tokens counted for every non-text content part (image, audio, ...)."""

_TRANSPORT_KEYS = frozenset({"stream", "stream_options"})
_MAX_DEPTH = 8
_STOPWORDS = frozenset(
    {
        "a",
        "an",
        "the",
        "to",
        "of",
        "for",
        "in",
        "on",
        "at",
        "and",
        "or",
        "with",
        "is",
        "are",
        "be",
        "by",
        "as",
        "that",
        "this",
        "it",
        "named",
        "called",
    }
)
_NUMBER_RE = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?![\w])")
_QUOTED_RE = re.compile(
    r"(?<!\w)'([^'\n]+)'(?!\w)|\"([^\"\n]+)\"|\u201c([^\u201d\n]+)\u201d"
    r"|\u2018([^\u2019\n]+)\u2019"
)
_QUOTED_KEY_RE = re.compile(r"(?<!\w)['\"\u201c\u2018]([A-Za-z_][\w\-]*)['\"\u201d\u2019](?!\w)")
_FORMAT_VALUES = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "duration": "P1D",
    "email": "user@example.com",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


# ---------------------------------------------------------------------------
# Messages, tokens and references
# ---------------------------------------------------------------------------


def split_tokens(text: str) -> list[str]:
    """Split a text into simulated tokens.

    A token is a whitespace-separated word plus the whitespace that follows it;
    leading whitespace belongs to the first token.

    Args:
        text: Any text.

    Returns:
        The tokens; their concatenation is ``text``.
    """
    tokens = re.findall(r"\S+\s*", text)
    leading = text[: len(text) - len(text.lstrip())]
    if not tokens:
        return [text] if text else []
    if leading:
        tokens[0] = leading + tokens[0]
    return tokens


def count_tokens(text: str) -> int:
    """Count the simulated tokens of a text.

    Args:
        text: Any text.

    Returns:
        ``len(split_tokens(text))``.
    """
    return len(split_tokens(text))


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return count_tokens(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if isinstance(part, str):
            total += count_tokens(part)
        elif (
            isinstance(part, Mapping)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        ):
            total += count_tokens(part["text"])
        else:
            total += NON_TEXT_PART_TOKENS
    return total


def prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Count the simulated prompt tokens of a conversation.

    Args:
        messages: OpenAI chat messages.

    Returns:
        The tokens of every content (each non-text part counts
        :data:`NON_TEXT_PART_TOKENS`) plus the names and arguments of assistant
        tool calls.
    """
    total = 0
    for message in messages:
        total += _content_tokens(message.get("content"))
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping):
                total += count_tokens(str(function.get("name") or ""))
                arguments = function.get("arguments")
                if isinstance(arguments, str):
                    total += count_tokens(arguments)
    return total


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """Return the text of the last ``user`` message.

    Args:
        messages: OpenAI chat messages.

    Returns:
        Its text (see :func:`content_text`), or ``""`` without a user message.
    """
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def parse_references(system_text: str) -> list[str]:
    r"""Extract the Mixture-of-Agents references from a system text.

    The block starts at the first :data:`REFERENCES_MARKER` that is directly
    followed by ``"\n1. "``. Reference ``i`` starts after ``"\n{i}. "`` and ends
    where ``"\n{i+1}. "`` starts; the last one runs to the end of the text.

    The opt-in delimited format of :func:`langchain_moa.prompts.format_references`
    is read too, when its first fence comes before any such block: each
    reference is the text between ``<reference-{nonce} id="{i}">`` plus a
    newline and a newline plus ``</reference-{nonce}>``, the nonce being the
    one of the fence with ``id="1"`` (a ``truncated`` attribute is ignored).

    Args:
        system_text: The text of a system message.

    Returns:
        The reference texts in order (``[]`` without a reference block).
    """
    fence = re.search(r'<reference-([0-9a-f]{8,}) id="1"(?: truncated="\d+")?>\n', system_text)
    paper = system_text.find(f"{REFERENCES_MARKER}\n1. ")
    if fence is not None and (paper < 0 or fence.start() < paper):
        nonce = fence.group(1)
        pattern = rf'<reference-{nonce} id="\d+"(?: truncated="\d+")?>\n(.*?)\n</reference-{nonce}>'
        return re.findall(pattern, system_text[fence.start() :], flags=re.DOTALL)
    start = 0
    while True:
        at = system_text.find(REFERENCES_MARKER, start)
        if at < 0:
            return []
        position = at + len(REFERENCES_MARKER)
        if system_text.startswith("\n1. ", position):
            break
        start = position
    references: list[str] = []
    index = 1
    position += len("\n1. ")
    while True:
        following = f"\n{index + 1}. "
        end = system_text.find(following, position)
        if end < 0:
            references.append(system_text[position:])
            return references
        references.append(system_text[position:end])
        position = end + len(following)
        index += 1


def find_references(messages: Iterable[Mapping[str, Any]]) -> list[str]:
    """Return the references of the first system message that has a block.

    Args:
        messages: OpenAI chat messages.

    Returns:
        The references (see :func:`parse_references`), or ``[]``.
    """
    for message in messages:
        if message.get("role") in SYSTEM_ROLES:
            references = parse_references(content_text(message.get("content")))
            if references:
                return references
    return []


def _first_word(text: str) -> str:
    words = text.split()
    return words[0] if words else ""


def _tool_name_for(messages: Sequence[Mapping[str, Any]], index: int) -> str:
    message = messages[index]
    call_id = message.get("tool_call_id")
    if call_id is not None:
        for previous in reversed(messages[:index]):
            for call in previous.get("tool_calls") or []:
                if isinstance(call, Mapping) and call.get("id") == call_id:
                    function = call.get("function")
                    if isinstance(function, Mapping) and function.get("name"):
                        return str(function["name"])
    name = message.get("name")
    return str(name) if name else "tool"


def simulated_answer(model: str, request_body: Mapping[str, Any]) -> str:
    """Return the deterministic text answer of ``model`` to a request.

    See the module docstring for the three formats.

    Args:
        model: The model name to put in the answer.
        request_body: The chat-completion request body (only ``messages`` is
            used).

    Returns:
        The answer text.
    """
    messages = [m for m in request_body.get("messages") or [] if isinstance(m, Mapping)]
    question = last_user_text(messages)
    if messages and messages[-1].get("role") in {"tool", "function"}:
        tool_name = _tool_name_for(messages, len(messages) - 1)
        result = content_text(messages[-1].get("content"))
        return f"{model} used {tool_name} -> {result} and answers: {question}"
    strategy_note = strategy_answer(model, messages)
    if strategy_note is not None:
        return strategy_note
    references = find_references(messages)
    if references:
        words = ", ".join(_first_word(reference) for reference in references)
        return f"{model} read {len(references)} references [{words}] and answers: {question}"
    return f"{model} answers: {question}"


# ---------------------------------------------------------------------------
# Aggregation strategies (staircase, sequential): what the aggregator was shown
# ---------------------------------------------------------------------------


def strategy_answer(model: str, messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The answer to a request of an aggregation strategy, showing what it was shown.

    A request is a strategy's when a system message with references also has
    a reference marked :data:`~langchain_moa.prompts.UNFINISHED_MARKER`, a
    continuation block (:func:`~langchain_moa.prompts.continuation_block`) or
    the sequential prompt. The answer is ``"{model} read {n} references [{w1}
    ({l1} words), {w2} ({l2} words, unfinished), ...] and answers: {question}"``
    (``w`` a reference's first word, ``l`` its length in words without the
    marker), with ``" continuing an answer of {N} words"`` before ``" and
    answers"`` when it was asked to continue an answer of ``N`` words.

    Args:
        model: The model name to put in the answer.
        messages: The request's messages.

    Returns:
        The answer, or ``None`` for any other request.
    """
    for message in messages:
        if message.get("role") not in SYSTEM_ROLES:
            continue
        system, answered = _split_continuation(content_text(message.get("content")))
        references = parse_references(system)
        unfinished = [r.endswith("\n" + UNFINISHED_MARKER) for r in references]
        sequential = DEFAULT_SEQUENTIAL_PROMPT in system
        if references and (answered is not None or any(unfinished) or sequential):
            shown = ", ".join(_reference_note(r) for r in references)
            continuing = "" if answered is None else f" continuing an answer of {answered} words"
            question = last_user_text(messages)
            read = f"{model} read {len(references)} references [{shown}]{continuing}"
            return f"{read} and answers: {question}"
    return None


def _split_continuation(system: str) -> tuple[str, int | None]:
    """The system text without its continuation block, and the words of the answer so far."""
    if CONTINUATION_PROMPT not in system:
        return system, None
    system, block = system.split(CONTINUATION_PROMPT, 1)
    answered = block.split("<response-so-far>\n", 1)[-1].rsplit("\n</response-so-far>", 1)[0]
    return system.removesuffix("\n\n"), len(answered.split())


def _reference_note(reference: str) -> str:
    """``"{first word} ({n} words)"``, with ``", unfinished"`` for a marked reference."""
    text = reference.removesuffix("\n" + UNFINISHED_MARKER)
    state = ", unfinished" if text != reference else ""
    return f"{_first_word(text)} ({len(text.split())} words{state})"


# ---------------------------------------------------------------------------
# JSON generation from a schema
# ---------------------------------------------------------------------------


@dataclass
class _Source:
    """What the generator may take values from, consumed as it goes."""

    text: str
    root: Mapping[str, Any]
    numbers: list[float] = field(default_factory=list)
    quoted: list[str] = field(default_factory=list)


def _parse_number(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _numbers_in(text: str) -> list[float]:
    values = (_parse_number(match.group()) for match in _NUMBER_RE.finditer(text))
    return [value for value in values if value is not None]


def quoted_strings(text: str) -> list[str]:
    """Return the strings quoted in a text, in order.

    Single, double and typographic quotes are recognised; an apostrophe inside
    a word (``"it's"``) does not open a quote.

    Args:
        text: Any text.

    Returns:
        The quoted strings, without the quotes.
    """
    return [
        next(group for group in match.groups() if group is not None)
        for match in _QUOTED_RE.finditer(text)
    ]


def _named_value(name: str, text: str) -> str | None:
    """Find the value written after a property name in the text.

    Accepts ``name: value``, ``name = value``, ``name is value``, ``name
    'quoted value'`` and ``name value`` (skipping a few filler words).
    """
    variants = {name, name.replace("_", " ")}
    for variant in sorted(variants):
        pattern = re.compile(
            rf"(?<![\w'\"]){re.escape(variant)}(?![\w'\"])\s*[:=]?\s*(.*)",
            re.IGNORECASE | re.DOTALL,
        )
        for match in pattern.finditer(text):
            rest = match.group(1)
            quoted = _QUOTED_RE.match(rest)
            if quoted:
                return next(group for group in quoted.groups() if group is not None)
            for word in re.findall(r"[^\s,;!?()\[\]{}]+", rest)[:4]:
                cleaned = word.strip("'\"").rstrip(".:")
                if not cleaned:
                    break
                if cleaned.lower() in _STOPWORDS:
                    continue
                return cleaned
    return None


def _resolve_ref(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    if not ref.startswith("#"):
        return {}
    node: Any = root
    for part in ref.lstrip("#").split("/"):
        if not part:
            continue
        key = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or key not in node:
            return {}
        node = node[key]
    return node if isinstance(node, Mapping) else {}


def _resolve(schema: Any, root: Mapping[str, Any], depth: int = 0) -> dict[str, Any]:
    """Follow ``$ref`` and pick the first non-null ``anyOf``/``oneOf`` option."""
    if not isinstance(schema, Mapping):
        return {}
    if depth > _MAX_DEPTH:
        return {"type": "string"}
    resolved = dict(schema)
    for _ in range(_MAX_DEPTH):
        if "$ref" in resolved:
            ref = resolved.pop("$ref")
            target = _resolve_ref(ref, root) if isinstance(ref, str) else {}
            resolved = {**target, **resolved}
            continue
        options = resolved.get("anyOf") or resolved.get("oneOf")
        if isinstance(options, list) and options:
            resolved.pop("anyOf", None)
            resolved.pop("oneOf", None)
            chosen: Mapping[str, Any] = next(
                (
                    option
                    for option in options
                    if isinstance(option, Mapping)
                    and _resolve(option, root, depth + 1).get("type") != "null"
                ),
                options[0] if isinstance(options[0], Mapping) else {},
            )
            resolved = {**resolved, **chosen}
            continue
        all_of = resolved.get("allOf")
        if isinstance(all_of, list):
            resolved.pop("allOf")
            merged: dict[str, Any] = {}
            for part in all_of:
                part_schema = _resolve(part, root, depth + 1)
                properties = {
                    **merged.get("properties", {}),
                    **part_schema.get("properties", {}),
                }
                required = [
                    *merged.get("required", []),
                    *part_schema.get("required", []),
                ]
                merged = {**merged, **part_schema}
                if properties:
                    merged["properties"] = properties
                if required:
                    merged["required"] = required
            resolved = {**merged, **resolved}
            continue
        break
    kind = resolved.get("type")
    if isinstance(kind, list):
        non_null = [k for k in kind if k != "null"]
        resolved["type"] = non_null[0] if non_null else "null"
    elif kind is None:
        if "const" in resolved:
            resolved["type"] = _json_type(resolved["const"])
        elif isinstance(resolved.get("enum"), list) and resolved["enum"]:
            resolved["type"] = _json_type(resolved["enum"][0])
        elif "properties" in resolved:
            resolved["type"] = "object"
        elif "items" in resolved:
            resolved["type"] = "array"
        else:
            resolved["type"] = "string"
    return resolved


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return "string"


def _bounds(schema: Mapping[str, Any]) -> tuple[float | None, float | None, bool, bool]:
    low, high = schema.get("minimum"), schema.get("maximum")
    low_open = high_open = False
    exclusive_low, exclusive_high = (
        schema.get("exclusiveMinimum"),
        schema.get("exclusiveMaximum"),
    )
    if isinstance(exclusive_low, bool):  # JSON Schema draft 4
        low_open = exclusive_low
    elif isinstance(exclusive_low, (int, float)):
        low, low_open = exclusive_low, True
    if isinstance(exclusive_high, bool):
        high_open = exclusive_high
    elif isinstance(exclusive_high, (int, float)):
        high, high_open = exclusive_high, True
    return (
        low if isinstance(low, (int, float)) else None,
        high if isinstance(high, (int, float)) else None,
        low_open,
        high_open,
    )


def _clamp(value: float, schema: Mapping[str, Any], *, integer: bool) -> float:
    low, high, low_open, high_open = _bounds(schema)
    if integer:
        if low is not None:
            low = math.floor(low) + 1 if low_open else math.ceil(low)
        if high is not None:
            high = math.ceil(high) - 1 if high_open else math.floor(high)
        low_open = high_open = False
    if low is not None and (value < low or (low_open and value <= low)):
        value = low
        if low_open:
            step = 1.0 if high is None else min(1.0, (high - low) / 2)
            value = low + step
    if high is not None and (value > high or (high_open and value >= high)):
        value = high
        if high_open:
            step = 1.0 if low is None else min(1.0, (high - low) / 2)
            value = high - step
    return value


def _take_number(source: _Source, *, integer: bool) -> float | None:
    for index, value in enumerate(source.numbers):
        if not integer or float(value).is_integer():
            del source.numbers[index]
            return value
    return None


def _number_value(
    schema: Mapping[str, Any], name: str, source: _Source, *, required: bool
) -> int | float | None:
    integer = schema.get("type") == "integer"
    raw = _named_value(name, source.text) if name else None
    value = _parse_number(raw) if raw is not None else None
    if value is not None and integer and not value.is_integer():
        value = None
    if value is None and required:
        value = _take_number(source, integer=integer)
        if value is None:
            value = 0.0
    if value is None:
        return None
    value = _clamp(value, schema, integer=integer)
    if integer:
        return int(value)
    return int(value) if float(value).is_integer() else value


def _string_value(
    schema: Mapping[str, Any],
    name: str,
    source: _Source,
    *,
    required: bool,
    taken: frozenset[str] = frozenset(),
) -> str | None:
    string_format = schema.get("format")
    if string_format in _FORMAT_VALUES:
        return _FORMAT_VALUES[string_format] if required else None
    value = _named_value(name, source.text) if name else None
    if value is None and required:
        for index, candidate in enumerate(source.quoted):
            if candidate not in taken:
                value = source.quoted.pop(index)
                break
    if value is None and required:
        value = f"simulated {name or 'value'}"
    if value is None:
        return None
    min_length = schema.get("minLength")
    max_length = schema.get("maxLength")
    if isinstance(min_length, int) and len(value) < min_length:
        value += "x" * (min_length - len(value))
    if isinstance(max_length, int) and max_length >= 0 and len(value) > max_length:
        value = value[:max_length]
    return value


def _boolean_value(name: str, source: _Source, *, required: bool) -> bool | None:
    raw = _named_value(name, source.text) if name else None
    if raw is not None:
        lowered = raw.lower()
        if lowered in {"true", "yes", "on", "1"}:
            return True
        if lowered in {"false", "no", "off", "0"}:
            return False
    return False if required else None


def _array_value(schema: Mapping[str, Any], name: str, source: _Source, depth: int) -> list[Any]:
    items = _resolve(schema.get("items", {}), source.root)
    min_items = schema.get("minItems")
    max_items = schema.get("maxItems")
    minimum = min_items if isinstance(min_items, int) and min_items > 0 else 1
    maximum = max_items if isinstance(max_items, int) and max_items >= 0 else None
    if maximum is not None:
        minimum = min(minimum, maximum)
    values: list[Any] = []
    kind = items.get("type")
    if kind in {"integer", "number"} and "enum" not in items:
        while maximum is None or len(values) < maximum:
            number = _take_number(source, integer=kind == "integer")
            if number is None:
                break
            number = _clamp(number, items, integer=kind == "integer")
            values.append(int(number) if float(number).is_integer() else number)
    elif (
        kind == "string"
        and "enum" not in items
        and "const" not in items
        and items.get("format") not in _FORMAT_VALUES
    ):
        while source.quoted and (maximum is None or len(values) < maximum):
            values.append(source.quoted.pop(0))
    index = len(values)
    while len(values) < minimum:
        index += 1
        values.append(_generate(items, f"{name or 'item'} {index}", source, depth + 1))
    return values


def _object_value(schema: Mapping[str, Any], source: _Source, depth: int) -> dict:
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or depth >= _MAX_DEPTH:
        return {}
    required = set(schema.get("required") or [])
    taken = frozenset(properties)
    result: dict[str, Any] = {}
    for key, raw_schema in properties.items():
        prop = _resolve(raw_schema, source.root)
        is_required = key in required
        value = _generate(prop, key, source, depth + 1, required=is_required, taken=taken)
        if value is not None or (is_required and prop.get("type") == "null"):
            result[key] = value
    return result


def _generate(
    schema: Any,
    name: str,
    source: _Source,
    depth: int,
    *,
    required: bool = True,
    taken: frozenset[str] = frozenset(),
) -> Any:
    """Generate a value; ``None`` for an optional property with no value found."""
    schema = _resolve(schema, source.root)
    if "const" in schema:
        return schema["const"] if required else None
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0] if required else None
    kind = schema.get("type")
    if kind in {"integer", "number"}:
        return _number_value(schema, name, source, required=required)
    if kind == "boolean":
        return _boolean_value(name, source, required=required)
    if kind == "null":
        return None
    if not required:
        if kind == "string":
            return _string_value(schema, name, source, required=False)
        return None
    if depth > _MAX_DEPTH:
        return {} if kind == "object" else [] if kind == "array" else ""
    if kind == "object":
        return _object_value(schema, source, depth)
    if kind == "array":
        return _array_value(schema, name, source, depth)
    return _string_value(schema, name, source, required=True, taken=taken)


def generate_from_schema(
    schema: Mapping[str, Any] | None, text: str = "", *, call_name: str | None = None
) -> Any:
    """Generate a deterministic JSON value that is valid for a JSON schema.

    Used for tool-call arguments and ``json_schema`` structured output. Values
    are taken from ``text`` (the last user message) where possible:

    * Objects: every required property, and an optional one only when a value
      for it is written after its name in the text (``name: value``,
      ``name = value``, ``name is value``, ``name 'quoted'`` or ``name word``).
    * Numbers and integers: the value written after the property name, else
      the next unused number of the ``call_name(...)`` call in the text (if
      that call has numbers), else the next unused number of the text, else 0;
      clamped to ``minimum``/``maximum`` (and exclusive bounds).
    * Strings: the value written after the property name, else the next unused
      quoted string of the text that is not a property name, else
      ``"simulated {name}"``. Known ``format`` values get a fixed valid string
      (``"2024-01-01"`` for ``date``, ...). ``minLength``/``maxLength`` are
      honoured.
    * Booleans: ``true``/``yes``/``false``/``no`` written after the name, else
      ``False``. ``enum`` gives its first value, ``const`` its value, ``null``
      gives ``None``.
    * Arrays: the remaining numbers (or quoted strings) for arrays of numbers
      (or strings), else ``max(minItems, 1)`` generated items.
    * ``$ref`` (to ``#/$defs/...`` or ``#/definitions/...``) is resolved,
      ``anyOf``/``oneOf`` use their first non-null option, ``allOf`` is merged.

    Args:
        schema: A JSON schema; ``None`` or ``{}`` of an object gives ``{}``.
        text: The text to take values from.
        call_name: A function name; numbers inside ``call_name(...)`` are
            preferred over other numbers of the text.

    Returns:
        The generated value.
    """
    if not schema:
        return {}
    numbers: list[float] = []
    if call_name:
        call = re.search(rf"(?<![\w]){re.escape(call_name)}\s*\(([^)]*)\)", text)
        if call:
            numbers = _numbers_in(call.group(1))
    source = _Source(
        text=text,
        root=schema,
        numbers=numbers or _numbers_in(text),
        quoted=quoted_strings(text),
    )
    return _generate(schema, "", source, 0)


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


# ---------------------------------------------------------------------------
# Turns and response payloads
# ---------------------------------------------------------------------------


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
