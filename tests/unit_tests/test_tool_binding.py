"""``bind_tools`` and ``with_structured_output``: what reaches the aggregator."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from langchain_moa import MoAChatModel
from tests.unit_tests.fakes import RecordingChatModel, ToolTakingChatModel


class Weather(BaseModel):
    """The weather in a city."""

    city: str
    forecast: str


def get_weather(city: str) -> str:
    """Get the weather in a city."""
    return f"sunny in {city}"


def ensemble(aggregator: Any) -> MoAChatModel:
    return MoAChatModel(proposers=[RecordingChatModel(name="p")], aggregator=aggregator, layers=2)


def openai_aggregator() -> ChatOpenAI:
    # Never called: only what is bound for it is looked at.
    return ChatOpenAI(model="gpt-4o", api_key="sk-not-used", base_url="http://127.0.0.1:9/v1")


def test_tool_settings_reach_the_aggregators_bind_tools() -> None:
    aggregator = ToolTakingChatModel(name="agg")
    llm = ensemble(aggregator).bind_tools(
        [get_weather], tool_choice="get_weather", parallel_tool_calls=False, strict=True
    )
    assert llm.invoke("weather in Paris?").content == "agg: answer 1"
    (binding,) = aggregator.tool_bindings
    assert [t["function"]["name"] for t in binding["tools"]] == ["get_weather"]
    assert binding["tool_choice"] == "get_weather"
    assert binding["parallel_tool_calls"] is False
    assert binding["strict"] is True
    assert binding["tools"][0]["function"]["strict"] is True


def test_unset_tool_settings_are_left_to_the_aggregators_defaults() -> None:
    aggregator = ToolTakingChatModel(name="agg")
    # A response format does not make a non-OpenAI aggregator's tools strict.
    llm = ensemble(aggregator).bind_tools([get_weather], response_format={"type": "json_object"})
    llm.invoke("weather in Paris?")
    (binding,) = aggregator.tool_bindings
    assert set(binding) == {"tools", "tool_choice"}
    assert binding["tool_choice"] is None
    assert "strict" not in binding["tools"][0]["function"]


def test_an_openai_aggregator_gets_strict_tools_only_with_a_response_format() -> None:
    llm = ensemble(openai_aggregator())
    plain = llm.bind_tools([get_weather])
    assert "strict" not in plain.kwargs  # type: ignore[attr-defined]
    assert "strict" not in plain.kwargs["tools"][0]["function"]  # type: ignore[attr-defined]
    # As create_agent does for OpenAI models: a strict response format needs strict tools.
    formatted = llm.bind_tools([get_weather], response_format=Weather)
    assert formatted.kwargs["strict"] is True  # type: ignore[attr-defined]
    assert formatted.kwargs["tools"][0]["function"]["strict"] is True  # type: ignore[attr-defined]
    # An explicit choice wins.
    loose = llm.bind_tools([get_weather], response_format=Weather, strict=False)
    assert loose.kwargs["strict"] is False  # type: ignore[attr-defined]


def test_structured_output_strict_reaches_the_aggregator() -> None:
    aggregator = ToolTakingChatModel(name="agg")
    structured = ensemble(aggregator).with_structured_output(Weather, strict=True, include_raw=True)
    result = structured.invoke("weather in Paris?")
    assert result["raw"].content == "agg: answer 1"  # type: ignore[index]
    (binding,) = aggregator.tool_bindings
    assert binding["strict"] is True
    assert binding["tool_choice"] == "any"
    assert binding["tools"][0]["function"]["name"] == "Weather"


def test_structured_output_refuses_unknown_arguments_by_name() -> None:
    llm = ensemble(ToolTakingChatModel(name="agg"))
    with pytest.raises(ValueError, match=r"unsupported arguments \['colour', 'tone'\]"):
        llm.with_structured_output(Weather, tone="dry", colour="red")
