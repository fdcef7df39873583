"""Tools and structured output over HTTP: only the final step is constrained."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel
from typing_extensions import TypedDict

from langchain_moa import MoAChatModel
from langchain_moa.testing import OpenAISimulator
from tests.simulated_usage import counts, simulator_usage


class Joke(BaseModel):
    """A joke."""

    setup: str
    punchline: str


class JokeDict(TypedDict):
    """A joke."""

    setup: str
    punchline: str


JOKE_SCHEMA = {
    "title": "Joke",
    "description": "A joke.",
    "type": "object",
    "properties": {"setup": {"type": "string"}, "punchline": {"type": "string"}},
    "required": ["setup", "punchline"],
}

QUESTION = "Tell me a joke about cats, as JSON with 'setup' and 'punchline' keys."


def ensemble(sim: OpenAISimulator, tag: str) -> MoAChatModel:
    def chat(model: str) -> ChatOpenAI:
        return ChatOpenAI(base_url=sim.base_url, api_key="sim", model=model, max_retries=0)

    return MoAChatModel(
        proposers=[chat(f"{tag}-p0"), chat(f"{tag}-p1")], aggregator=chat(f"{tag}-agg"), layers=2
    )


def assert_proposers_free(sim: OpenAISimulator, tag: str) -> None:
    for name in (f"{tag}-p0", f"{tag}-p1"):
        for request in sim.requests_for(name):
            assert "response_format" not in request.body
            assert request.body.get("tool_choice") in (None, "none")


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
@pytest.mark.parametrize(
    "schema", [Joke, JokeDict, JOKE_SCHEMA], ids=["pydantic", "typeddict", "dict"]
)
def test_structured_output_methods(
    openai_simulator: OpenAISimulator, method: str, schema: object, request: pytest.FixtureRequest
) -> None:
    tag = f"so-{request.node.callspec.id}"
    result = (
        ensemble(openai_simulator, tag)
        .with_structured_output(schema, method=method)
        .invoke(QUESTION)
    )
    if schema is Joke:
        assert isinstance(result, Joke)
        result = result.model_dump()
    assert set(result) == {"setup", "punchline"}
    assert all(isinstance(v, str) and v for v in result.values())
    body = openai_simulator.requests_for(f"{tag}-agg")[0].body
    if method == "function_calling":
        assert body["tools"][0]["function"]["name"] in {"Joke", "JokeDict"}
        assert body["tool_choice"] not in (None, "none", "auto")
    elif method == "json_schema":
        assert body["response_format"]["type"] == "json_schema"
    else:
        assert body["response_format"] == {"type": "json_object"}
    assert_proposers_free(openai_simulator, tag)


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
async def test_include_raw_and_async(openai_simulator: OpenAISimulator, method: str) -> None:
    tag = f"raw-{method}"
    llm = ensemble(openai_simulator, tag).with_structured_output(
        Joke, method=method, include_raw=True
    )
    out = await llm.ainvoke(QUESTION)
    assert isinstance(out["raw"], AIMessage)
    assert isinstance(out["parsed"], Joke)
    assert out["parsing_error"] is None
    # Every call's usage, as the simulator counted it: two proposers, the aggregator.
    sent = [r for r in openai_simulator.requests if r.model.startswith(f"{tag}-")]
    assert sorted(r.model for r in sent) == [f"{tag}-agg", f"{tag}-p0", f"{tag}-p1"]
    assert counts(out["raw"].usage_metadata) == simulator_usage(sent)
    assert len(out["raw"].response_metadata["proposals"][0]) == 2


def test_structured_output_streams_the_parsed_result(openai_simulator: OpenAISimulator) -> None:
    llm = ensemble(openai_simulator, "sos").with_structured_output(Joke, method="json_schema")
    chunks = list(llm.stream(QUESTION))
    assert chunks
    assert chunks[-1] == Joke(setup="simulated setup", punchline="simulated punchline")


def test_unsupported_method_is_refused(openai_simulator: OpenAISimulator) -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        ensemble(openai_simulator, "bad").with_structured_output(Joke, method="xml")  # type: ignore[arg-type]


@tool
def magic_function(input: int) -> int:
    """Apply a magic function to an input."""
    return input + 2


def test_tools_go_to_the_aggregator_and_proposers_only_see_them(
    openai_simulator: OpenAISimulator,
) -> None:
    llm = ensemble(openai_simulator, "tools").bind_tools(
        [magic_function], tool_choice="magic_function"
    )
    result = llm.invoke("What is the value of magic_function(3)?")
    assert result.tool_calls[0]["name"] == "magic_function"
    assert result.tool_calls[0]["args"] == {"input": 3}
    agg = openai_simulator.requests_for("tools-agg")[0].body
    assert agg["tool_choice"] == {"type": "function", "function": {"name": "magic_function"}}
    for name in ("tools-p0", "tools-p1"):
        body = openai_simulator.requests_for(name)[0].body
        assert body["tools"][0]["function"]["name"] == "magic_function"
        assert body["tool_choice"] == "none"


def test_tool_call_histories_pass_to_every_agent(openai_simulator: OpenAISimulator) -> None:
    history = [
        HumanMessage("What is magic_function(3)?"),
        AIMessage(
            "", tool_calls=[{"name": "magic_function", "args": {"input": 3}, "id": "call_1"}]
        ),
        ToolMessage("5", tool_call_id="call_1"),
    ]
    result = ensemble(openai_simulator, "hist").bind_tools([magic_function]).invoke(history)
    assert (
        result.content
        == "hist-agg used magic_function -> 5 and answers: What is magic_function(3)?"
    )
    for name in ("hist-p0", "hist-p1", "hist-agg"):
        roles = [m["role"] for m in openai_simulator.requests_for(name)[0].body["messages"]]
        assert roles[-3:] == ["user", "assistant", "tool"]
