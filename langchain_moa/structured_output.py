"""``with_structured_output`` for an ensemble: only the final step is constrained.

Proposals stay free text. The aggregator gets the schema through its own
``with_structured_output`` (``json_schema``, ``json_mode``) or through tool calling
(``function_calling``); the ensemble's message is the aggregator's raw message,
parsed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

if TYPE_CHECKING:
    from langchain_moa.chat_model import MoAChatModel

StructuredMethod = Literal["function_calling", "json_schema", "json_mode"]
"""How the aggregator is constrained."""

METHODS: tuple[str, ...] = ("function_calling", "json_schema", "json_mode")


@dataclass(frozen=True)
class StructuredRequest:
    """A schema for the aggregator's answer (``json_schema``/``json_mode``)."""

    schema: Any
    method: StructuredMethod
    strict: bool | None = None


def _is_pydantic(schema: Any) -> bool:
    return isinstance(schema, type) and is_basemodel_subclass(schema)


def _parser(schema: Any, method: StructuredMethod) -> Runnable:
    if method == "function_calling":
        if _is_pydantic(schema):
            return PydanticToolsParser(tools=[schema], first_tool_only=True)
        name = convert_to_openai_tool(schema)["function"]["name"]
        return JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
    if _is_pydantic(schema):
        return PydanticOutputParser(pydantic_object=schema)
    return JsonOutputParser()


def structured_runnable(
    model: MoAChatModel,
    schema: Mapping[str, Any] | type,
    *,
    method: StructuredMethod,
    include_raw: bool,
    strict: bool | None,
) -> Runnable:
    """Build the runnable that ``MoAChatModel.with_structured_output`` returns.

    Args:
        model: The ensemble.
        schema: A pydantic class, a TypedDict or a JSON schema dict.
        method: ``function_calling``, ``json_schema`` or ``json_mode``.
        include_raw: Return ``{"raw", "parsed", "parsing_error"}`` instead of
            raising on a parsing error.
        strict: Ask the aggregator's provider to enforce the schema.

    Returns:
        A runnable from the model's input to the parsed output.
    """
    if method not in METHODS:
        msg = f"method must be one of {', '.join(METHODS)}; got {method!r}"
        raise ValueError(msg)
    trace_format = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
    if method == "function_calling":
        llm = model.bind_tools(
            [schema], tool_choice="any", strict=strict, ls_structured_output_format=trace_format
        )
    else:
        request = StructuredRequest(schema=schema, method=method, strict=strict)
        llm = model.bind(structured_output=request, ls_structured_output_format=trace_format)
    parser = _parser(schema, method)
    if not include_raw:
        return llm | parser
    parsed = RunnablePassthrough.assign(
        parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
    )
    unparsed = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=llm) | parsed.with_fallbacks([unparsed], exception_key="parsing_error")


def constrained_aggregator(model: Any, request: StructuredRequest) -> Runnable:
    """The aggregator with its own structured output, returning its raw message."""
    kwargs: dict[str, Any] = {"method": request.method, "include_raw": True}
    if request.strict is not None:
        kwargs["strict"] = request.strict
    return model.with_structured_output(request.schema, **kwargs) | itemgetter("raw")
