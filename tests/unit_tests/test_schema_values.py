"""The simulator's schema-value generator, checked against JSON Schema itself.

``generate_from_schema`` takes its values from the prompt (LangChain's standard
tests need that), so it is hand-written; here ``hypothesis-jsonschema`` is the
oracle: for generated object schemas it draws a valid instance (proving the
schema satisfiable) that becomes the prompt, and ``jsonschema`` checks that
the generator's value is valid for the schema, whatever the prompt says.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from langchain_moa.testing.schema_values import generate_from_schema

Schema = dict[str, Any]

NAMES = st.from_regex(r"[a-z][a-z_]{0,9}", fullmatch=True)


@st.composite
def string_schemas(draw: st.DrawFn) -> Schema:
    schema: Schema = {"type": "string"}
    low = draw(st.none() | st.integers(0, 12))
    high = draw(st.none() | st.integers(low or 0, 20))
    if low is not None:
        schema["minLength"] = low
    if high is not None:
        schema["maxLength"] = high
    return schema


@st.composite
def number_schemas(draw: st.DrawFn) -> Schema:
    integer = draw(st.booleans())
    schema: Schema = {"type": "integer" if integer else "number"}
    if integer:
        low = draw(st.integers(-10_000, 10_000))
        width = draw(st.integers(2, 10_000))
    else:
        low = draw(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))
        width = draw(st.floats(1e-3, 1e6, allow_nan=False, allow_infinity=False))
    if draw(st.booleans()):
        schema["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = low
    if draw(st.booleans()):
        schema["exclusiveMaximum" if draw(st.booleans()) else "maximum"] = low + width
    return schema


ENUMS = st.lists(
    st.text(max_size=6) | st.integers(-100, 100), min_size=1, max_size=4, unique=True
).map(lambda values: {"enum": values})

LEAVES = string_schemas() | number_schemas() | st.just({"type": "boolean"}) | ENUMS


@st.composite
def array_schemas(draw: st.DrawFn, items: st.SearchStrategy[Schema]) -> Schema:
    schema: Schema = {"type": "array", "items": draw(items)}
    low = draw(st.none() | st.integers(0, 3))
    high = draw(st.none() | st.integers(max(low or 0, 1), 5))
    if low is not None:
        schema["minItems"] = low
    if high is not None:
        schema["maxItems"] = high
    return schema


@st.composite
def object_schemas(draw: st.DrawFn, values: st.SearchStrategy[Schema]) -> Schema:
    properties = draw(st.dictionaries(NAMES, values, min_size=1, max_size=5))
    required = draw(st.lists(st.sampled_from(sorted(properties)), unique=True))
    schema: Schema = {"type": "object", "properties": properties, "required": required}
    if draw(st.booleans()):
        schema["additionalProperties"] = False
    return schema


PROPERTY_SCHEMAS = st.recursive(
    LEAVES,
    lambda children: array_schemas(children) | object_schemas(children),
    max_leaves=8,
)
SCHEMAS = object_schemas(PROPERTY_SCHEMAS)


def _prompt(instance: Any, path: str = "") -> list[str]:
    """Say the instance's values after their names, the way a user would."""
    if isinstance(instance, dict):
        return [part for key, value in instance.items() for part in _prompt(value, key)]
    if isinstance(instance, list):
        return [part for value in instance for part in _prompt(value, path)]
    value = f"'{instance}'" if isinstance(instance, str) else json.dumps(instance)
    return [f"{path}: {value}" if path else value]


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(schema=SCHEMAS, data=st.data())
def test_generated_values_are_valid_for_their_schema(schema: Schema, data: st.DataObject) -> None:
    instance = data.draw(from_schema(schema), label="a valid instance (the oracle's)")
    jsonschema.validate(instance, schema)
    prompt = data.draw(
        st.sampled_from([", ".join(_prompt(instance)), json.dumps(instance), ""]) | st.text(),
        label="prompt",
    )
    value = generate_from_schema(schema, prompt)
    jsonschema.validate(value, schema)


def test_quoted_strings_fit_the_length_of_array_items() -> None:
    schema = {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 3}}},
        "required": ["tags"],
    }
    assert generate_from_schema(schema, "tags 'alpha' and 'b'") == {"tags": ["alp", "b"]}
