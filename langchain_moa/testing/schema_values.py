"""JSON values generated from a JSON schema, taking what they can from the prompt.

The simulator answers tool calls and ``json_schema`` structured output with
:func:`generate_from_schema`: a deterministic value that is valid for the
schema, whose numbers, strings and booleans come from the last user message
where it gives them (LangChain's standard tests ask for
``magic_function(3)`` and check that the call's argument is 3). Everything
here is pure (no I/O, no clock, no randomness).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["generate_from_schema", "quoted_strings"]

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
    return _fit_length(value, schema)


def _fit_length(value: str, schema: Mapping[str, Any]) -> str:
    """Pad (with ``x``) or cut ``value`` to the schema's ``minLength``/``maxLength``."""
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
            values.append(_fit_length(source.quoted.pop(0), items))
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
