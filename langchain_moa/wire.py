"""The OpenAI Chat Completions wire format, shared by the simulator and the server.

Pure functions over JSON-ready values (no I/O, no clock, no randomness): the
checks of a request body, the ``chat.completion`` and ``chat.completion.chunk``
objects, server-sent events, model objects and OpenAI-style error bodies.
:mod:`langchain_moa.testing.server` (the simulator) and
:mod:`langchain_moa.server` (the OpenAI-compatible endpoint of an ensemble)
both build their requests' answers with these, so the two speak exactly the
same dialect, the one the official ``openai`` client parses.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

KNOWN_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
"""Message roles a request may use."""

SYSTEM_ROLES = frozenset({"system", "developer"})
"""Roles of the messages that carry instructions."""

TOOL_CHOICE_MODES = frozenset({"none", "auto", "required"})
"""The ``tool_choice`` strings."""

RESPONSE_FORMAT_TYPES = frozenset({"text", "json_object", "json_schema"})
"""The ``response_format.type`` values."""

SSE_DONE = b"data: [DONE]\n\n"
"""The event that ends a stream."""

MAX_JSON_DEPTH = 64
"""How deeply a request body's arrays and objects may nest (the body itself is level 1)."""

MAX_TOKENS = 2**31 - 1
"""The largest ``max_tokens`` / ``max_completion_tokens`` a request may ask for."""

_FORMAT_FIELDS = {
    "text": {"type"},
    "json_object": {"type"},
    "json_schema": {"type", "json_schema"},
}
_SURROGATE = re.compile("[\ud800-\udfff]")
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SHOWN_CHARS = 60


class RequestError(ValueError):
    """A chat-completion request body that is refused with 400.

    Attributes:
        param: The offending request parameter, if any.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    @property
    def message(self) -> str:
        """The error message."""
        return str(self)


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------


def shown(value: Any) -> str:
    """A client's value for an error message: its ``repr``, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[: _SHOWN_CHARS - 3]}..."


def _encodable(text: str) -> str:
    """``text`` with each lone surrogate written out as backslash, ``u`` and hex digits."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _refuse_constant(name: str) -> Any:
    msg = f"{name} is not a JSON number"
    raise ValueError(msg)


def loads_request(raw: bytes | str) -> Any:
    """Decode a request body, refusing what JSON parsers disagree on or choke on.

    Refused: malformed JSON (``NaN`` and ``Infinity`` too), a number of more
    than Python's 4300 digits, nesting deeper than :data:`MAX_JSON_DEPTH`, and
    whatever :func:`check_json_tree` refuses.

    Args:
        raw: The body as received.

    Returns:
        The decoded JSON value.

    Raises:
        RequestError: The body cannot be read as a request.
    """
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        msg = f"The request body is nested deeper than {MAX_JSON_DEPTH} levels."
        raise RequestError(msg) from None
    except ValueError as error:  # UnicodeDecodeError too
        digits = "integer string conversion" in str(error)
        msg = "a number in the request body has too many digits" if digits else ""
        raise RequestError(msg or "The request body is not valid JSON.") from None
    check_json_tree(body)
    return body


def _path(trail: tuple[Any, ...] | None) -> str:
    parts: list[str] = []
    while trail is not None:
        trail, key = trail
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return "".join(reversed(parts)).lstrip(".")


def check_json_tree(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    r"""Refuse a decoded body no provider could receive, anywhere in it.

    Without recursion (a deep body cannot exhaust the stack), it refuses
    nesting deeper than ``max_depth``, a string or field name holding a lone
    surrogate (a ``\ud800`` escape alone is valid JSON, but not Unicode that
    UTF-8 can carry) and a non-finite number. The error names the field, never echoing
    the bad text.

    Args:
        value: The decoded body.
        max_depth: The deepest nesting allowed (the body itself is level 1).

    Raises:
        RequestError: The first problem found; ``param`` is the field's path
            (``messages[0].name``), or for nesting the top-level field.
    """
    stack: list[tuple[Any, int, tuple[Any, ...] | None]] = [(value, 1, None)]
    while stack:
        item, depth, trail = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                where = _path(trail) or "the request body"
                msg = f"{where} is not valid Unicode: it holds a lone surrogate (U+D800-U+DFFF)"
                raise RequestError(msg, _path(trail) or None)
        elif isinstance(item, float):
            if not math.isfinite(item):
                msg = f"{_path(trail)} must be a finite number"
                raise RequestError(msg, _path(trail) or None)
        elif isinstance(item, (Mapping, list)):
            if depth > max_depth:
                field = _path(trail).split(".")[0].split("[")[0]
                msg = f"{field} is nested deeper than {max_depth} levels"
                raise RequestError(msg, field or None)
            if isinstance(item, list):
                stack.extend((child, depth + 1, (trail, i)) for i, child in enumerate(item))
                continue
            for key, child in item.items():
                if isinstance(key, str) and _SURROGATE.search(key):
                    where = _path(trail) or "the request body"
                    msg = f"a field name in {where} is not valid Unicode: it holds a lone surrogate"
                    raise RequestError(msg, _path(trail) or None)
                stack.append((child, depth + 1, (trail, key)))


def function_tools(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return the ``function`` entries of the function tools of a request.

    Args:
        body: The request body.

    Returns:
        The ``function`` objects, in order.
    """
    tools = body.get("tools") or []
    return [
        tool["function"]
        for tool in tools
        if isinstance(tool, Mapping) and tool.get("type") == "function"
    ]


def named_choice(choice: Any) -> str | None:
    """The function named by a ``tool_choice`` object, if it names one.

    Args:
        choice: A ``tool_choice`` value.

    Returns:
        The function name, or ``None`` for a mode string or another shape.
    """
    if (
        isinstance(choice, Mapping)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), Mapping)
        and isinstance(choice["function"].get("name"), str)
    ):
        return choice["function"]["name"]
    return None


def validate_request(body: Any) -> dict[str, Any]:
    """Check the shape of a chat-completion request body.

    Only the structure is checked (model, messages and their roles and
    contents, the ``text`` and ``image_url`` of content parts, ``n``, token
    limits up to :data:`MAX_TOKENS`, ``stop``, ``stream_options``, tools (each
    with ``type`` and, for ``"function"``, a name of at most 64 letters,
    digits, ``_`` or ``-``), ``tool_choice`` and ``response_format`` (only the
    fields of its type)); other parameters are left to the caller. Decode
    bodies with :func:`loads_request`, which refuses what no provider could
    receive.

    Args:
        body: The decoded JSON body.

    Returns:
        The body, as a new dict.

    Raises:
        RequestError: If the body is not a valid request; ``param`` names the
            offending field.
    """
    if not isinstance(body, Mapping):
        msg = "The request body must be a JSON object."
        raise RequestError(msg)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        msg = "you must provide a model parameter (a non-empty string)"
        raise RequestError(msg, "model")
    messages = body.get("messages")
    if not isinstance(messages, list):
        msg = "'messages' is a required property and must be an array"
        raise RequestError(msg, "messages")
    if not messages:
        msg = "'messages' must contain at least one message"
        raise RequestError(msg, "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            msg = f"messages[{index}] must be an object"
            raise RequestError(msg, f"messages[{index}]")
        role = message.get("role")
        if not isinstance(role, str) or role not in KNOWN_ROLES:
            msg = (
                f"messages[{index}].role must be one of "
                f"{', '.join(sorted(KNOWN_ROLES))}, got {shown(role)}"
            )
            raise RequestError(msg, f"messages[{index}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            msg = f"messages[{index}].content must be a string or an array"
            raise RequestError(msg, f"messages[{index}].content")
        if isinstance(content, list):
            _validate_parts(content, f"messages[{index}].content")
    n = body.get("n")
    if n is not None and n != 1:
        msg = "only n=1 is supported"
        raise RequestError(msg, "n")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS
        ):
            msg = f"{name} must be an integer between 1 and {MAX_TOKENS}, got {shown(value)}"
            raise RequestError(msg, name)
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        msg = "stop must be a string or an array of strings"
        raise RequestError(msg, "stop")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, Mapping):
        msg = "stream_options must be an object"
        raise RequestError(msg, "stream_options")
    _validate_tools(body)
    _validate_response_format(body.get("response_format"))
    return dict(body)


def _validate_parts(parts: list[Any], where: str) -> None:
    """Check the fields of the text and image parts of a message's content."""
    for index, part in enumerate(parts):
        if not isinstance(part, Mapping):
            continue  # a bare string, or what check_conversation names
        kind = part.get("type")
        if not isinstance(kind, str):
            msg = f"{where}[{index}].type is required (a string such as 'text')"
            raise RequestError(msg, f"{where}[{index}].type")
        if kind == "text" and not isinstance(part.get("text"), str):
            msg = f"{where}[{index}].text must be a string"
            raise RequestError(msg, f"{where}[{index}].text")
        if kind == "image_url":
            image = part.get("image_url")
            if not (isinstance(image, Mapping) and isinstance(image.get("url"), str)):
                msg = f"{where}[{index}].image_url must be an object with a url (a string)"
                raise RequestError(msg, f"{where}[{index}].image_url")


def _validate_tools(body: Mapping[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            msg = "tools must be an array"
            raise RequestError(msg, "tools")
        for index, tool in enumerate(tools):
            if not isinstance(tool, Mapping):
                msg = f"tools[{index}] must be an object"
                raise RequestError(msg, f"tools[{index}]")
            kind = tool.get("type")
            if not isinstance(kind, str):
                msg = f"tools[{index}].type is required (a string: 'function')"
                raise RequestError(msg, f"tools[{index}].type")
            if kind != "function":
                continue
            function = tool.get("function")
            name = function.get("name") if isinstance(function, Mapping) else None
            if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
                msg = (
                    f"tools[{index}].function.name must be 1 to 64 letters, digits, "
                    f"'_' or '-', got {shown(name)}"
                )
                raise RequestError(msg, f"tools[{index}].function.name")
            description = function.get("description")
            if description is not None and not isinstance(description, str):
                msg = f"tools[{index}].function.description must be a string"
                raise RequestError(msg, f"tools[{index}].function.description")
            parameters = function.get("parameters")
            if parameters is not None and not isinstance(parameters, Mapping):
                msg = f"tools[{index}].function.parameters must be an object"
                raise RequestError(msg, f"tools[{index}].function.parameters")
    choice = body.get("tool_choice")
    if choice is None:
        return
    names = [function["name"] for function in function_tools(body)]
    if isinstance(choice, str):
        if choice not in TOOL_CHOICE_MODES:
            msg = f"tool_choice must be one of none, auto, required; got {shown(choice)}"
            raise RequestError(msg, "tool_choice")
        if choice == "required" and not names:
            msg = "tool_choice 'required' is only allowed when tools are specified"
            raise RequestError(msg, "tool_choice")
        return
    name = named_choice(choice)
    if name is None:
        msg = "unsupported tool_choice; use a mode string or a function name"
        raise RequestError(msg, "tool_choice")
    if name not in names:
        msg = f"tool_choice names the function {shown(name)}, which is not in tools"
        raise RequestError(msg, "tool_choice")


def _validate_response_format(response_format: Any) -> None:
    if response_format is None:
        return
    if not isinstance(response_format, Mapping):
        msg = "response_format must be an object"
        raise RequestError(msg, "response_format")
    kind = response_format.get("type")
    if not isinstance(kind, str) or kind not in RESPONSE_FORMAT_TYPES:
        msg = (
            f"response_format.type must be one of text, json_object, json_schema; got {shown(kind)}"
        )
        raise RequestError(msg, "response_format.type")
    extra = [name for name in response_format if name not in _FORMAT_FIELDS[kind]]
    if extra:
        msg = f"response_format of type {kind!r} has no field {shown(extra[0])}"
        raise RequestError(msg, "response_format")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            msg = "response_format.json_schema must be an object with a name"
            raise RequestError(msg, "response_format.json_schema")
        schema = spec.get("schema")
        if schema is not None and not isinstance(schema, Mapping):
            msg = "response_format.json_schema.schema must be an object"
            raise RequestError(msg, "response_format.json_schema.schema")


def content_text(content: Any) -> str:
    """Return the text of a message content.

    Args:
        content: A string, a list of content parts or ``None``.

    Returns:
        The string itself, or the concatenated ``text`` of the ``text`` parts
        (other parts are skipped); ``""`` for anything else.
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif (
                isinstance(part, Mapping)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                texts.append(part["text"])
        return "".join(texts)
    return ""


# ---------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------


def tool_call_object(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """One entry of an assistant message's ``tool_calls``.

    Args:
        call_id: The call id (``call_...``).
        name: The function name.
        arguments: The JSON-encoded arguments.

    Returns:
        ``{"id", "type": "function", "function": {"name", "arguments"}}``.
    """
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def assistant_message(
    content: str | None, tool_calls: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """The ``message`` of a ``chat.completion`` choice.

    Args:
        content: The answer text (``None`` for a tool call without text).
        tool_calls: Entries built with :func:`tool_call_object`.

    Returns:
        ``{"role": "assistant", "content", "refusal": None}``, plus
        ``tool_calls`` when there are any.
    """
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = [dict(call) for call in tool_calls]
    return message


def completion_body(
    *,
    response_id: str,
    created: int,
    model: str,
    message: Mapping[str, Any],
    finish_reason: str | None,
    usage: Mapping[str, Any] | None,
    system_fingerprint: str | None = None,
) -> dict[str, Any]:
    """Build a ``chat.completion`` object with one choice.

    Args:
        response_id: The ``id`` field (``chatcmpl-...``).
        created: The ``created`` Unix timestamp.
        model: The model that answered.
        message: The choice's message (see :func:`assistant_message`).
        finish_reason: ``"stop"``, ``"length"``, ``"tool_calls"``, ... or ``None``.
        usage: The ``usage`` object, if known.
        system_fingerprint: The ``system_fingerprint`` field.

    Returns:
        The JSON-ready response body.
    """
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": system_fingerprint,
        "choices": [
            {
                "index": 0,
                "message": dict(message),
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": dict(usage) if usage is not None else None,
    }


def chunk_choice(delta: Mapping[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    """One choice of a ``chat.completion.chunk``.

    Args:
        delta: What this chunk adds (``role``, ``content``, ``tool_calls``).
        finish_reason: Set on the choice's last chunk only.

    Returns:
        ``{"index": 0, "delta", "logprobs": None, "finish_reason"}``.
    """
    return {"index": 0, "delta": dict(delta), "logprobs": None, "finish_reason": finish_reason}


def chunk_body(
    *,
    response_id: str,
    created: int,
    model: str,
    choices: Sequence[Mapping[str, Any]],
    include_usage: bool,
    usage: Mapping[str, Any] | None = None,
    system_fingerprint: str | None = None,
) -> dict[str, Any]:
    """Build a ``chat.completion.chunk`` object.

    Args:
        response_id: The ``id`` shared by every chunk of the stream.
        created: The ``created`` Unix timestamp.
        model: The model that answers.
        choices: The chunk's choices (see :func:`chunk_choice`); ``[]`` for the
            usage chunk.
        include_usage: Whether ``stream_options.include_usage`` was asked for;
            then every chunk has a ``usage`` field (``null`` but on the last).
        usage: The ``usage`` of the last chunk.
        system_fingerprint: The ``system_fingerprint`` field.

    Returns:
        The JSON-ready chunk.
    """
    chunk: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": system_fingerprint,
        "choices": [dict(choice) for choice in choices],
    }
    if include_usage:
        chunk["usage"] = dict(usage) if usage is not None else None
    return chunk


def sse_event(payload: Mapping[str, Any]) -> bytes:
    """Encode one server-sent event: ``data: <json>`` and a blank line.

    Args:
        payload: A chunk or an error body.

    Returns:
        The event's bytes.
    """
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


def model_object(name: str, *, owned_by: str, created: int = 0) -> dict[str, Any]:
    """An entry of ``GET /v1/models``.

    Args:
        name: The model id.
        owned_by: Who serves it.
        created: A Unix timestamp.

    Returns:
        ``{"id", "object": "model", "created", "owned_by"}``.
    """
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}


def model_list(models: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The body of ``GET /v1/models``.

    Args:
        models: Entries built with :func:`model_object`.

    Returns:
        ``{"object": "list", "data": [...]}``.
    """
    return {"object": "list", "data": [dict(model) for model in models]}


ERROR_KINDS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout", "timeout"),
    409: ("invalid_request_error", "conflict"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", "server_error"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "timeout"),
}
"""``(type, code)`` of an error body, by HTTP status."""


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    r"""Build an OpenAI-style error body.

    Args:
        status: The HTTP status.
        message: The human-readable message.
        param: The offending parameter, if any.
        code: The error code; by default chosen after the status.

    Returns:
        ``{"error": {"message", "type", "param", "code"}}`` with ``type`` and
        ``code`` chosen after the status (``"requests"`` /
        ``"rate_limit_exceeded"`` for 429, ``"server_error"`` for 5xx,
        ``"invalid_request_error"`` for other 4xx). A lone surrogate in
        ``message`` or ``param`` is written as the text ``\udXXX``, so the
        body can always be sent as UTF-8.
    """
    default = (
        ("server_error", "server_error")
        if status >= 500
        else ("invalid_request_error", "invalid_request")
    )
    error_type, default_code = ERROR_KINDS.get(status, default)
    return {
        "error": {
            "message": _encodable(message),
            "type": error_type,
            "param": None if param is None else _encodable(param),
            "code": code or default_code,
        }
    }
