"""Tests of the local OpenAI simulator (``langchain_moa.testing``).

The server is exercised through the real client stack (``ChatOpenAI`` -> openai
SDK -> HTTP on loopback) and through plain ``httpx``; the pure answer builders
of ``langchain_moa.testing.answers`` are unit tested at the end.

The ``openai_simulator`` fixture comes from
``pytest_plugins = ["langchain_moa.testing.pytest_plugin"]`` in
``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import (
    AIMessage,
    BaseMessageChunk,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from langchain_moa.testing import ModelBehavior, OpenAISimulator, RecordedRequest
from langchain_moa.testing.answers import (
    RequestError,
    apply_stop,
    choose_tool,
    count_tokens,
    generate_from_schema,
    json_object_answer,
    parse_references,
    prompt_tokens,
    quoted_strings,
    simulate,
    simulated_answer,
    split_tokens,
    stream_chunks,
    validate_request,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _llm(sim: OpenAISimulator, model: str, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(base_url=sim.base_url, api_key="sim", model=model, max_retries=0, **kwargs)


def _chat_body(model: str, question: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        **extra,
    }


class _MagicFunctionSchema(BaseModel):
    input: int = Field(..., gt=-1000, lt=1000)


@tool(args_schema=_MagicFunctionSchema)
def magic_function(_input: int) -> int:
    """Apply a magic function to an input."""
    return _input + 2


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return "It's sunny."


class Joke(BaseModel):
    """Joke to tell user."""

    setup: str = Field(description="question to set up a joke")
    punchline: str = Field(description="answer to resolve the joke")


# ---------------------------------------------------------------------------
# Plain chat through ChatOpenAI
# ---------------------------------------------------------------------------


def test_invoke(openai_simulator: OpenAISimulator) -> None:
    result = _llm(openai_simulator, "m1").invoke("What is MoA?")
    assert isinstance(result, AIMessage)
    assert result.content == "m1 answers: What is MoA?"
    assert result.response_metadata["model_name"] == "m1"
    assert result.response_metadata["finish_reason"] == "stop"
    assert result.usage_metadata is not None
    assert result.usage_metadata["input_tokens"] == 3
    assert result.usage_metadata["output_tokens"] == 5
    assert result.usage_metadata["total_tokens"] == 8


async def test_ainvoke(openai_simulator: OpenAISimulator) -> None:
    result = await _llm(openai_simulator, "m-async").ainvoke(
        [SystemMessage("be brief"), HumanMessage("first"), AIMessage("ok"), "second"]
    )
    assert result.content == "m-async answers: second"
    assert result.usage_metadata is not None
    assert result.usage_metadata["input_tokens"] == 5


def test_stream_with_usage(openai_simulator: OpenAISimulator) -> None:
    llm = _llm(openai_simulator, "m-stream", stream_usage=True)
    chunks = list(llm.stream("Hello there"))
    texts = [chunk.content for chunk in chunks if chunk.content]
    assert texts == ["m-stream ", "answers: ", "Hello ", "there"]
    full = chunks[0]
    for chunk in chunks[1:]:
        full += chunk
    assert full.content == "m-stream answers: Hello there"
    assert full.usage_metadata is not None
    assert full.usage_metadata["input_tokens"] == 2
    assert full.usage_metadata["output_tokens"] == 4
    assert full.usage_metadata["total_tokens"] == 6
    assert full.response_metadata["finish_reason"] == "stop"
    assert full.response_metadata["model_name"] == "m-stream"


async def test_astream_with_usage(openai_simulator: OpenAISimulator) -> None:
    llm = _llm(openai_simulator, "m-astream", stream_usage=True)
    full = None
    async for chunk in llm.astream("Hello async"):
        full = chunk if full is None else full + chunk
    assert full is not None
    assert full.content == "m-astream answers: Hello async"
    assert full.usage_metadata is not None
    assert full.usage_metadata["output_tokens"] == 4


def test_stream_events_raw(openai_simulator: OpenAISimulator) -> None:
    body = _chat_body("m-raw", "one two", stream=True, stream_options={"include_usage": True})
    response = httpx.post(f"{openai_simulator.base_url}/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [
        line.removeprefix("data: ")
        for line in response.text.split("\n\n")
        if line.startswith("data: ")
    ]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content_chunks = [chunk for chunk in chunks if chunk["choices"]]
    assert [c["choices"][0]["finish_reason"] for c in content_chunks] == [
        None,
        None,
        None,
        "stop",
    ]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 4,
        "total_tokens": 6,
    }


def test_stop_sequence(openai_simulator: OpenAISimulator) -> None:
    llm = _llm(openai_simulator, "m-stop")
    assert llm.invoke("say hello world", stop=["world"]).content == ("m-stop answers: say hello ")
    streamed = "".join(str(chunk.content) for chunk in llm.stream("a b c d", stop=["c", "b"]))
    assert streamed == "m-stop answers: a "


def test_max_tokens(openai_simulator: OpenAISimulator) -> None:
    llm = _llm(openai_simulator, "m-max", max_tokens=3)
    result = llm.invoke("one two three four")
    assert result.content == "m-max answers: one "
    assert result.response_metadata["finish_reason"] == "length"
    assert result.usage_metadata is not None
    assert result.usage_metadata["output_tokens"] == 3
    full = None
    for chunk in llm.stream("one two three four"):
        full = chunk if full is None else full + chunk
    assert full is not None
    assert full.content == "m-max answers: one "
    assert full.response_metadata["finish_reason"] == "length"


def test_list_content_parts(openai_simulator: OpenAISimulator) -> None:
    message = HumanMessage(
        content=[
            {"type": "text", "text": "Describe "},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "text", "text": "this picture"},
        ]
    )
    result = _llm(openai_simulator, "m-parts").invoke([message])
    assert result.content == "m-parts answers: Describe this picture"
    assert result.usage_metadata is not None
    assert result.usage_metadata["input_tokens"] == 4  # 3 words + 1 image part


def test_moa_references(openai_simulator: OpenAISimulator) -> None:
    system = (
        "You are helpful.\n\nYou have been provided with a set of responses.\n\n"
        "Responses from models:"
        "\n1. p1 answers: What is 2+2?"
        "\n2. p2 answers: What is 2+2?\nIt is four.\n3 is not it."
        "\n3. p3 read 2 references [p1, p2] and answers: What is 2+2?"
    )
    result = _llm(openai_simulator, "agg").invoke(
        [SystemMessage(system), HumanMessage("What is 2+2?")]
    )
    assert result.content == ("agg read 3 references [p1, p2, p3] and answers: What is 2+2?")


def test_a_hand_built_reference_block_in_a_system_text_part_is_read(
    openai_simulator: OpenAISimulator,
) -> None:
    # The simulator alone, no MoAChatModel: answers are collected and laid out as
    # a reference block by hand (MoA itself: test_moa_http.py).
    question = "Why is the sky blue?"
    proposers = ["p-a", "p-b", "p-c"]
    answers = [str(_llm(openai_simulator, name).invoke(question).content) for name in proposers]
    block = "Responses from models:" + "".join(
        f"\n{i}. {text}" for i, text in enumerate(answers, 1)
    )
    system = SystemMessage(content=[{"type": "text", "text": "\n\n" + block}])
    result = _llm(openai_simulator, "agg-e2e").invoke([system, HumanMessage(question)])
    assert result.content == (
        "agg-e2e read 3 references [p-a, p-b, p-c] and answers: Why is the sky blue?"
    )


def test_requests_are_recorded(openai_simulator: OpenAISimulator) -> None:
    llm = ChatOpenAI(
        base_url=openai_simulator.base_url,
        api_key="sim-secret-key",
        model="m-record",
        temperature=0.3,
        max_retries=0,
    )
    llm.invoke("recorded?")
    recorded = openai_simulator.requests_for("m-record")
    assert len(recorded) == 1
    assert isinstance(recorded[0], RecordedRequest)
    assert recorded[0].model == "m-record"
    assert recorded[0].body["messages"] == [{"role": "user", "content": "recorded?"}]
    assert recorded[0].body["temperature"] == 0.3
    assert recorded[0].time <= time.monotonic()
    assert "sim-secret-key" not in repr(openai_simulator.requests)
    # The copy is detached from the simulator's own list.
    openai_simulator.requests.clear()
    assert openai_simulator.requests_for("m-record")


def test_clear_requests() -> None:
    with OpenAISimulator() as sim:
        httpx.post(f"{sim.base_url}/chat/completions", json=_chat_body("m1", "x"))
        assert len(sim.requests) == 1
        sim.clear_requests()
        assert sim.requests == []


# ---------------------------------------------------------------------------
# Tools and structured output
# ---------------------------------------------------------------------------


def test_tool_calling(openai_simulator: OpenAISimulator) -> None:
    llm = _llm(openai_simulator, "m-tools").bind_tools(
        [get_weather, magic_function], tool_choice="auto"
    )
    query = "What is the value of magic_function(3)? Use the tool."
    result = llm.invoke(query)
    assert isinstance(result, AIMessage)
    assert len(result.tool_calls) == 1
    call = result.tool_calls[0]
    assert call["name"] == "magic_function"
    assert call["args"] == {"input": 3}
    assert call["id"] is not None
    assert call["id"].startswith("call_")
    assert result.response_metadata["finish_reason"] == "tool_calls"

    full = None
    for chunk in llm.stream(query):
        full = chunk if full is None else full + chunk
    assert isinstance(full, AIMessage)
    assert [(c["name"], c["args"], c["id"]) for c in full.tool_calls] == [
        ("magic_function", {"input": 3}, call["id"])
    ]

    tool_message = ToolMessage("5", tool_call_id=call["id"])
    answer = llm.invoke([HumanMessage(query), result, tool_message])
    assert answer.content == f"m-tools used magic_function -> 5 and answers: {query}"
    assert not answer.tool_calls


def test_tool_choice_modes(openai_simulator: OpenAISimulator) -> None:
    llm = _llm(openai_simulator, "m-choice")
    forced = llm.bind_tools([magic_function, get_weather], tool_choice="get_weather")
    result = forced.invoke("Hello!")
    assert result.tool_calls[0]["name"] == "get_weather"
    assert result.tool_calls[0]["args"] == {"location": "simulated location"}
    required = llm.bind_tools([magic_function, get_weather], tool_choice="any")
    assert required.invoke("Hello!").tool_calls[0]["name"] == "magic_function"
    none = llm.bind_tools([magic_function], tool_choice="none")
    assert none.invoke("Hello!").content == "m-choice answers: Hello!"


def test_unicode_tool_arguments(openai_simulator: OpenAISimulator) -> None:
    @tool
    def create_customer(customer_name: str, description: str) -> str:
        """Create a customer."""
        return customer_name

    llm = _llm(openai_simulator, "m-unicode").bind_tools([create_customer], tool_choice="any")
    result = llm.invoke("Create a customer named '你好啊集团' (Hello Group)")
    assert result.tool_calls[0]["args"]["customer_name"] == "你好啊集团"


# openai's ``parse()`` path makes pydantic warn about the ``parsed`` field; this
# happens against the real API as well and is unrelated to the simulator.
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output(openai_simulator: OpenAISimulator, method: str) -> None:
    structured = _llm(openai_simulator, f"m-so-{method}").with_structured_output(
        Joke, method=method
    )
    result = structured.invoke("Tell me a joke about cats.")
    assert result == Joke(setup="simulated setup", punchline="simulated punchline")
    chunks = list(structured.stream("Tell me a joke about cats."))
    assert chunks
    assert chunks[-1] == result


def test_structured_output_dict_schema(openai_simulator: OpenAISimulator) -> None:
    structured = _llm(openai_simulator, "m-so-dict").with_structured_output(
        Joke.model_json_schema(), method="json_schema"
    )
    assert structured.invoke("Tell me a joke with setup: Knock") == {
        "setup": "Knock",
        "punchline": "simulated punchline",
    }


def test_json_mode(openai_simulator: OpenAISimulator) -> None:
    llm = _llm(openai_simulator, "m-json")
    question = (
        "Tell me a joke about cats. Return the result as a JSON with 'setup' and "
        "'punchline' keys. Return nothing other than JSON."
    )
    result = llm.with_structured_output(Joke, method="json_mode").invoke(question)
    assert result == Joke(setup="simulated setup", punchline="simulated punchline")
    last = None
    for last in llm.with_structured_output(method="json_mode").stream(question):
        assert isinstance(last, dict)
    assert last == {"setup": "simulated setup", "punchline": "simulated punchline"}
    plain = llm.bind(response_format={"type": "json_object"}).invoke("hi")
    assert json.loads(str(plain.content)) == {"answer": "m-json answers: hi"}


# ---------------------------------------------------------------------------
# Behaviour knobs
# ---------------------------------------------------------------------------


def test_error_status_500(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("m-500", ModelBehavior(error_status=500))
    with pytest.raises(openai.InternalServerError) as info:
        _llm(openai_simulator, "m-500").invoke("hi")
    assert info.value.status_code == 500
    response = httpx.post(
        f"{openai_simulator.base_url}/chat/completions", json=_chat_body("m-500", "x")
    )
    assert response.status_code == 500
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["type"] == "server_error"
    assert "m-500" in error["message"]


def test_rate_limit_with_retry_after(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("m-429", ModelBehavior(error_status=429, retry_after=1))
    response = httpx.post(
        f"{openai_simulator.base_url}/chat/completions", json=_chat_body("m-429", "x")
    )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError):
        _llm(openai_simulator, "m-429").invoke("hi")
    with pytest.raises(openai.RateLimitError):
        list(_llm(openai_simulator, "m-429").stream("hi"))


def test_failure_rate_is_reproducible(openai_simulator: OpenAISimulator) -> None:
    url = f"{openai_simulator.base_url}/chat/completions"

    def statuses(model: str) -> list[int]:
        with httpx.Client() as client:
            return [client.post(url, json=_chat_body(model, str(i))).status_code for i in range(30)]

    behavior = ModelBehavior(failure_rate=0.5, failure_status=503, seed=7)
    openai_simulator.set_behavior("m-flaky", behavior)
    first = statuses("m-flaky")
    openai_simulator.set_behavior("m-flaky", behavior)  # resets the generator
    assert statuses("m-flaky") == first
    rng = random.Random(7)
    assert first == [503 if rng.random() < 0.5 else 200 for _ in range(30)]
    assert 0 < first.count(503) < 30


def test_fail_first(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("m-fail-first", ModelBehavior(fail_first=2, failure_status=502))
    llm = _llm(openai_simulator, "m-fail-first")
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as info:
            llm.invoke("hi")
        assert info.value.status_code == 502
    assert llm.invoke("hi").content == "m-fail-first answers: hi"
    # With retries the client gets through on its own.
    openai_simulator.set_behavior("m-retry", ModelBehavior(fail_first=2))
    retrying = ChatOpenAI(
        base_url=openai_simulator.base_url,
        api_key="sim",
        model="m-retry",
        max_retries=2,
    )
    start = time.monotonic()
    assert retrying.invoke("hi").content == "m-retry answers: hi"
    assert len(openai_simulator.requests_for("m-retry")) == 3
    assert time.monotonic() - start < 10


def test_hang_times_out(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("m-hang", ModelBehavior(hang=True))
    llm = _llm(openai_simulator, "m-hang", timeout=0.3)
    start = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        llm.invoke("hi")
    with pytest.raises(openai.APITimeoutError):
        list(llm.stream("hi"))
    assert time.monotonic() - start < 5


async def test_hang_ends_when_server_stops() -> None:
    sim = OpenAISimulator(behaviors={"m-hang": {"hang": True}})
    async with sim, httpx.AsyncClient(timeout=10) as client:
        task = asyncio.create_task(
            client.post(f"{sim.base_url}/chat/completions", json=_chat_body("m-hang", "x"))
        )
        await asyncio.sleep(0.2)
        assert not task.done()
        start = time.monotonic()
        await asyncio.to_thread(sim.stop)
        assert time.monotonic() - start < 5
        try:
            response = await task
        except httpx.HTTPError:
            pass  # the connection was closed: also fine
        else:
            assert response.status_code == 503


def test_malformed(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("m-bad", ModelBehavior(malformed=True))
    response = httpx.post(
        f"{openai_simulator.base_url}/chat/completions", json=_chat_body("m-bad", "x")
    )
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)
    llm = _llm(openai_simulator, "m-bad")
    with pytest.raises((openai.APIError, ValueError)):
        llm.invoke("hi")
    with pytest.raises((openai.APIError, ValueError)):
        list(llm.stream("hi"))


def test_latency_and_token_delay(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior(
        "m-slow", ModelBehavior(first_token_latency=0.2, token_delay=0.05)
    )
    llm = _llm(openai_simulator, "m-slow")
    start = time.monotonic()
    assert llm.invoke("a b").content == "m-slow answers: a b"
    assert time.monotonic() - start >= 0.2 + 0.05 * 4 - 0.02
    start = time.monotonic()
    stamps = []
    for chunk in llm.stream("a b"):
        if chunk.content:
            stamps.append(time.monotonic() - start)
    assert len(stamps) == 4
    assert stamps[0] >= 0.18
    assert stamps[-1] - stamps[0] >= 0.05 * 3 - 0.02


def test_behaviors_from_constructor_and_removal() -> None:
    with OpenAISimulator(
        behaviors={"m-x": {"error_status": 418}, "m-y": ModelBehavior(fail_first=1)}
    ) as sim:
        assert sim.behaviors["m-x"] == ModelBehavior(error_status=418)
        url = f"{sim.base_url}/chat/completions"
        assert httpx.post(url, json=_chat_body("m-x", "x")).status_code == 418
        sim.set_behavior("m-x", None)
        assert httpx.post(url, json=_chat_body("m-x", "x")).status_code == 200
        assert "m-x" not in sim.behaviors


# ---------------------------------------------------------------------------
# Hostile-provider knobs
# ---------------------------------------------------------------------------

_SECRET_KEY = "sk-sim-echo-0123456789abcdefXYZ"


def _stream_events(response: httpx.Response) -> list[str]:
    """The ``data:`` payloads of an SSE response read so far (``[DONE]`` included)."""
    return [line.removeprefix("data: ") for line in response.iter_lines() if line]


def _read_events_until_error(
    url: str, body: dict[str, Any], timeout: httpx.Timeout
) -> tuple[list[str], Exception | None]:
    """Read a stream's events; return them and the error that ended it (if any)."""
    events: list[str] = []
    with (
        httpx.Client(timeout=timeout) as client,
        client.stream("POST", url, json=body) as response,
    ):
        assert response.status_code == 200
        try:
            for line in response.iter_lines():
                if line:
                    events.append(line.removeprefix("data: "))
        except httpx.HTTPError as exc:
            return events, exc
    return events, None


def _collect_contents(stream: Iterator[BaseMessageChunk], into: list[str]) -> None:
    """Append the content of every streamed chunk to ``into`` (until an error)."""
    for chunk in stream:
        into.append(str(chunk.content))


def test_echo_key(openai_simulator: OpenAISimulator) -> None:
    url = f"{openai_simulator.base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {_SECRET_KEY}"}
    openai_simulator.set_behavior("m-echo-401", ModelBehavior(error_status=401, echo_key=True))
    response = httpx.post(url, json=_chat_body("m-echo-401", "x"), headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["message"] == (
        f"Incorrect API key provided: {_SECRET_KEY}. You can find your API key at "
        "https://platform.openai.com/account/api-keys. (simulated error of model 'm-echo-401')"
    )
    assert error["code"] == "invalid_api_key"
    # Through ChatOpenAI: an AuthenticationError whose text holds the whole key.
    llm = ChatOpenAI(
        base_url=openai_simulator.base_url, api_key=_SECRET_KEY, model="m-echo-401", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as info:
        llm.invoke("hi")
    assert _SECRET_KEY in str(info.value)
    with pytest.raises(openai.AuthenticationError) as info:
        list(llm.stream("hi"))
    assert _SECRET_KEY in str(info.value)
    # Other failures echo it too; successes and models without the knob do not.
    openai_simulator.set_behavior("m-echo-first", ModelBehavior(fail_first=1, echo_key=True))
    first = httpx.post(url, json=_chat_body("m-echo-first", "x"), headers=headers)
    assert first.status_code == 500
    assert f"Incorrect API key provided: {_SECRET_KEY}." in first.json()["error"]["message"]
    second = httpx.post(url, json=_chat_body("m-echo-first", "x"), headers=headers)
    assert second.status_code == 200
    assert _SECRET_KEY not in second.text
    openai_simulator.set_behavior("m-echo-rate", ModelBehavior(failure_rate=1, echo_key=True))
    rate = httpx.post(url, json=_chat_body("m-echo-rate", "x"), headers=headers)
    assert rate.status_code == 500
    assert _SECRET_KEY in rate.json()["error"]["message"]
    openai_simulator.set_behavior("m-no-echo", ModelBehavior(error_status=401))
    plain = httpx.post(url, json=_chat_body("m-no-echo", "x"), headers=headers)
    assert plain.status_code == 401
    assert _SECRET_KEY not in plain.text
    # The key is echoed, never stored.
    for model in ("m-echo-401", "m-echo-first", "m-echo-rate", "m-no-echo"):
        assert _SECRET_KEY not in repr(openai_simulator.requests_for(model))


def test_null_content(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("m-null", ModelBehavior(null_content=True))
    url = f"{openai_simulator.base_url}/chat/completions"
    plain = httpx.post(url, json=_chat_body("m-null", "one two")).json()
    assert plain["choices"][0]["message"]["content"] is None
    assert plain["choices"][0]["finish_reason"] == "stop"
    assert plain["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    body = _chat_body("m-null", "one two", stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", url, json=body) as response:
        events = _stream_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert [chunk["choices"] for chunk in chunks] == [
        [{"index": 0, "delta": {"role": "assistant", "content": None}, "logprobs": None,
          "finish_reason": None}],
        [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
        [],
    ]  # fmt: skip
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    llm = _llm(openai_simulator, "m-null", stream_usage=True)
    result = llm.invoke("one two")
    assert result.content == ""
    assert result.response_metadata["finish_reason"] == "stop"
    assert result.usage_metadata is not None
    assert result.usage_metadata["output_tokens"] == 4
    streamed = list(llm.stream("one two"))
    assert "".join(str(chunk.content) for chunk in streamed) == ""
    assert [c.response_metadata.get("finish_reason") for c in streamed].count("stop") == 1


def test_empty_choices(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("m-empty", ModelBehavior(empty_choices=True))
    url = f"{openai_simulator.base_url}/chat/completions"
    plain = httpx.post(url, json=_chat_body("m-empty", "one two")).json()
    assert plain["object"] == "chat.completion"
    assert plain["choices"] == []
    assert plain["usage"]["total_tokens"] == 6
    body = _chat_body("m-empty", "one two", stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", url, json=body) as response:
        events = _stream_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert len(chunks) == 5  # one per token, then the usage chunk
    assert all(chunk["choices"] == [] for chunk in chunks)
    assert chunks[-1]["usage"]["total_tokens"] == 6
    llm = _llm(openai_simulator, "m-empty")
    with pytest.raises((IndexError, ValueError)):  # langchain_openai finds no generation
        llm.invoke("one two")
    assert "".join(str(chunk.content) for chunk in llm.stream("one two")) == ""


def test_die_after_tokens(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("m-die", ModelBehavior(die_after_tokens=2))
    url = f"{openai_simulator.base_url}/chat/completions"
    timeout = httpx.Timeout(10.0)
    body = _chat_body("m-die", "one two", stream=True, stream_options={"include_usage": True})
    events, error = _read_events_until_error(url, body, timeout)
    assert isinstance(error, httpx.RemoteProtocolError)  # unterminated chunked body
    chunks = [json.loads(event) for event in events]  # no [DONE], no usage chunk
    assert [chunk["choices"][0]["delta"].get("content") for chunk in chunks] == [
        "m-die ",
        "answers: ",
    ]
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in chunks)
    # More tokens asked than the answer has: all of them, still no finish_reason.
    openai_simulator.set_behavior("m-die-late", ModelBehavior(die_after_tokens=99))
    events, error = _read_events_until_error(
        url, _chat_body("m-die-late", "a", stream=True), timeout
    )
    assert isinstance(error, httpx.RemoteProtocolError)
    assert len(events) == 3
    assert all(json.loads(event)["choices"][0]["finish_reason"] is None for event in events)
    # Non-streaming: the connection closes without any response.
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(url, json=_chat_body("m-die", "one two"), timeout=timeout)
    llm = _llm(openai_simulator, "m-die")
    with pytest.raises(openai.APIConnectionError):
        llm.invoke("one two")
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        _collect_contents(llm.stream("one two"), received)
    assert "".join(received) == "m-die answers: "
    # The simulator itself carries on.
    assert _llm(openai_simulator, "m1").invoke("still there?").content == (
        "m1 answers: still there?"
    )


def test_hang_after_tokens(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("m-hang-after", ModelBehavior(hang_after_tokens=2))
    url = f"{openai_simulator.base_url}/chat/completions"
    timeout = httpx.Timeout(10.0, read=0.4)
    body = _chat_body("m-hang-after", "one two", stream=True)
    events, error = _read_events_until_error(url, body, timeout)
    assert isinstance(error, httpx.ReadTimeout)
    chunks = [json.loads(event) for event in events]
    assert [chunk["choices"][0]["delta"]["content"] for chunk in chunks] == [
        "m-hang-after ",
        "answers: ",
    ]
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in chunks)
    with pytest.raises(httpx.ReadTimeout):  # non-streaming: like ``hang``
        httpx.post(url, json=_chat_body("m-hang-after", "x"), timeout=httpx.Timeout(10, read=0.2))
    llm = _llm(openai_simulator, "m-hang-after", timeout=0.4)
    received: list[str] = []
    with pytest.raises(openai.APITimeoutError):
        _collect_contents(llm.stream("one two"), received)
    assert "".join(received) == "m-hang-after answers: "


async def test_hang_after_tokens_ends_when_server_stops() -> None:
    sim = OpenAISimulator(behaviors={"m-hang-after": {"hang_after_tokens": 1}})
    async with sim, httpx.AsyncClient(timeout=10) as client:
        body = _chat_body("m-hang-after", "x", stream=True)
        async with client.stream("POST", f"{sim.base_url}/chat/completions", json=body) as response:
            lines = response.aiter_lines()
            first = await anext(lines)
            assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["content"]
            start = time.monotonic()
            await asyncio.to_thread(sim.stop)
            with pytest.raises(httpx.RemoteProtocolError):  # cut, no [DONE]
                _ = [line async for line in lines]
            assert time.monotonic() - start < 5


def test_no_finish_reason(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("m-no-finish", ModelBehavior(no_finish_reason=True))
    url = f"{openai_simulator.base_url}/chat/completions"
    plain = httpx.post(url, json=_chat_body("m-no-finish", "one two")).json()
    assert plain["choices"][0]["finish_reason"] is None
    assert plain["choices"][0]["message"]["content"] == "m-no-finish answers: one two"
    body = _chat_body("m-no-finish", "one two", stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", url, json=body) as response:
        events = _stream_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    choices = [choice for chunk in chunks for choice in chunk["choices"]]
    assert len(choices) == 4
    assert all(choice["finish_reason"] is None for choice in choices)
    assert chunks[-1]["usage"]["total_tokens"] == 6
    llm = _llm(openai_simulator, "m-no-finish")
    result = llm.invoke("one two")
    assert result.content == "m-no-finish answers: one two"
    assert result.response_metadata["finish_reason"] is None
    streamed = list(llm.stream("one two"))
    assert "".join(str(chunk.content) for chunk in streamed) == "m-no-finish answers: one two"
    assert all(chunk.response_metadata.get("finish_reason") is None for chunk in streamed)


def test_hostile_knob_validation() -> None:
    knobs = {
        "echo_key": True,
        "no_finish_reason": True,
        "hang_after_tokens": 0,
        "error_status": 401,
    }
    behavior = ModelBehavior.from_dict(knobs)
    assert behavior.to_dict() == {**ModelBehavior().to_dict(), **knobs}
    assert ModelBehavior(die_after_tokens=3).die_after_tokens == 3
    for name in ("echo_key", "null_content", "empty_choices", "no_finish_reason"):
        with pytest.raises(TypeError, match=name):
            ModelBehavior.from_dict({name: 1})
    for name in ("die_after_tokens", "hang_after_tokens"):
        with pytest.raises(ValueError, match=name):
            ModelBehavior.from_dict({name: -1})
        with pytest.raises(TypeError, match=name):
            ModelBehavior.from_dict({name: 1.5})
        with pytest.raises(TypeError, match=name):
            ModelBehavior.from_dict({name: True})
    with pytest.raises(ValueError, match="cannot be combined"):
        ModelBehavior(die_after_tokens=1, hang_after_tokens=1)
    with pytest.raises(ValueError, match="cannot be combined"):
        ModelBehavior(null_content=True, empty_choices=True)
    with pytest.raises(ValueError, match="cannot be combined"):
        ModelBehavior(malformed=True, die_after_tokens=0)


# ---------------------------------------------------------------------------
# HTTP surface, lifecycle, concurrency, CLI
# ---------------------------------------------------------------------------


def test_models_endpoint(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("m-listed", ModelBehavior())
    response = httpx.get(f"{openai_simulator.base_url}/models")
    assert response.status_code == 200
    payload = response.json()
    assert payload["object"] == "list"
    ids = [model["id"] for model in payload["data"]]
    assert {"m1", "m-listed"} <= set(ids)
    assert all(model["object"] == "model" for model in payload["data"])
    client = openai.OpenAI(base_url=openai_simulator.base_url, api_key="sim")
    assert "m-listed" in [model.id for model in client.models.list()]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m1"}, "messages"),
        ({"model": "m1", "messages": "hello"}, "messages"),
        ({"model": "m1", "messages": [{"role": "robot", "content": "x"}]}, None),
        (_chat_body("m1", "x", n=2), "n"),
        (_chat_body("m1", "x", tool_choice="required"), "tool_choice"),
    ],
)
def test_invalid_requests(
    openai_simulator: OpenAISimulator, body: dict[str, Any], param: str | None
) -> None:
    response = httpx.post(f"{openai_simulator.base_url}/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


def test_bad_json_and_unknown_route(openai_simulator: OpenAISimulator) -> None:
    response = httpx.post(
        f"{openai_simulator.base_url}/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert "error" in response.json()
    missing = httpx.get(f"{openai_simulator.base_url}/nothing-here")
    assert missing.status_code == 404
    assert "error" in missing.json()


def test_missing_messages_through_sdk(openai_simulator: OpenAISimulator) -> None:
    client = openai.OpenAI(base_url=openai_simulator.base_url, api_key="sim", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m1", messages=[])


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com", "::"])
def test_non_loopback_host_refused(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        OpenAISimulator(host=host)


def test_loopback_hosts_and_lifecycle() -> None:
    sim = OpenAISimulator(host="localhost")
    with pytest.raises(RuntimeError):
        _ = sim.port
    sim.start()
    try:
        sim.start()  # idempotent
        assert sim.base_url == f"http://127.0.0.1:{sim.port}/v1"
        assert httpx.get(f"{sim.base_url}/models").status_code == 200
    finally:
        sim.stop()
        sim.stop()  # idempotent
    assert not sim.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{sim.base_url}/models")
    # The whole 127.0.0.0/8 range is loopback (not connected to: pytest-socket
    # allows 127.0.0.1 only).
    assert OpenAISimulator(host="127.0.0.2").host == "127.0.0.2"


async def test_inside_running_event_loop() -> None:
    async with OpenAISimulator() as sim:
        result = await ChatOpenAI(
            base_url=sim.base_url, api_key="sim", model="m1", max_retries=0
        ).ainvoke("inside a loop")
        assert result.content == "m1 answers: inside a loop"
    assert not sim.running


async def test_concurrent_requests(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("m-concurrent", ModelBehavior(first_token_latency=0.3))
    url = f"{openai_simulator.base_url}/chat/completions"
    count = 200
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def ask(i: int) -> str:
            response = await client.post(
                url,
                json=_chat_body("m-concurrent", f"question {i}", stream=i % 2 == 0),
                headers={"Authorization": "Bearer sim"},
            )
            response.raise_for_status()
            if i % 2:
                return response.json()["choices"][0]["message"]["content"]
            text = ""
            for event in response.text.split("\n\n"):
                data = event.removeprefix("data: ")
                if event.startswith("data: ") and data != "[DONE]":
                    choices = json.loads(data)["choices"]
                    text += choices[0]["delta"].get("content") or "" if choices else ""
            return text

        start = time.monotonic()
        answers = await asyncio.gather(*(ask(i) for i in range(count)))
        elapsed = time.monotonic() - start
    assert answers == [f"m-concurrent answers: question {i}" for i in range(count)]
    # One after another would take 0.3 s x 200 = 60 s; a quarter of that proves
    # concurrency and leaves room for a loaded 2-core machine.
    assert elapsed < 0.3 * count / 4


def test_cli_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "langchain_moa.testing", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0
    for option in ("--host", "--port", "--behaviors"):
        assert option in result.stdout


@pytest.mark.skipif(os.name == "nt", reason="uses SIGINT")
def test_cli_serves_until_interrupted(tmp_path: Path) -> None:
    behaviors = tmp_path / "behaviors.json"
    behaviors.write_text(json.dumps({"cli-model": {"error_status": 503}}))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "langchain_moa.testing",
            "--port",
            "0",
            "--behaviors",
            str(behaviors),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        assert base_url.endswith("/v1")
        ids = [m["id"] for m in httpx.get(f"{base_url}/models").json()["data"]]
        assert "cli-model" in ids
        url = f"{base_url}/chat/completions"
        assert httpx.post(url, json=_chat_body("cli-model", "x")).status_code == 503
        ok = httpx.post(url, json=_chat_body("m1", "x"))
        assert ok.json()["choices"][0]["message"]["content"] == "m1 answers: x"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        finally:
            process.kill()
            process.communicate()
    assert process.returncode == 0


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    from langchain_moa.testing.server import main

    with pytest.raises(SystemExit) as info:
        main(["--host", "0.0.0.0"])
    assert info.value.code == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"m": {"no_such_knob": 1}}))
    with pytest.raises(SystemExit):
        main(["--behaviors", str(bad)])


# ---------------------------------------------------------------------------
# Pure unit tests of answers.py and ModelBehavior
# ---------------------------------------------------------------------------


def test_parse_references() -> None:
    text = "Intro\n\nResponses from models:\n1. a one\nstill one\n2. b two\n3. c"
    assert parse_references(text) == ["a one\nstill one", "b two", "c"]
    assert parse_references("no block here") == []
    assert parse_references("Responses from models:") == []
    # A "\n3. " inside reference 1 does not split it: parsing is sequential.
    assert parse_references("Responses from models:\n1. x\n3. y\n2. z") == [
        "x\n3. y",
        "z",
    ]


def test_simulated_answer_formats() -> None:
    plain = {"messages": [{"role": "user", "content": "Q?"}]}
    assert simulated_answer("m", plain) == "m answers: Q?"
    refs = {
        "messages": [
            {"role": "system", "content": "Responses from models:\n1. a x\n2. b y"},
            {"role": "user", "content": "Q?"},
        ]
    }
    assert simulated_answer("m", refs) == "m read 2 references [a, b] and answers: Q?"
    tool_result = {
        "messages": [
            {"role": "user", "content": "Q?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "adder", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "3"},
        ]
    }
    assert simulated_answer("m", tool_result) == "m used adder -> 3 and answers: Q?"
    assert simulated_answer("m", {"messages": []}) == "m answers: "


def test_tokens() -> None:
    assert split_tokens("m1 answers:  hi there") == [
        "m1 ",
        "answers:  ",
        "hi ",
        "there",
    ]
    assert split_tokens("  lead") == ["  lead"]
    assert split_tokens("") == []
    assert count_tokens("a b c") == 3
    assert "".join(split_tokens(" x  y \n")) == " x  y \n"
    messages = [
        {"role": "user", "content": "one two"},
        {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "img"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}],
        },
    ]
    assert prompt_tokens(messages) == 2 + 2 + 1 + 2


def test_generate_from_schema() -> None:
    magic = {
        "type": "object",
        "properties": {"input": {"type": "integer", "exclusiveMinimum": -1000, "maximum": 999}},
        "required": ["input"],
    }
    text = "What is the value of magic_function(3)? Use the tool."
    assert generate_from_schema(magic, text, call_name="magic_function") == {"input": 3}
    assert generate_from_schema(magic, "no numbers") == {"input": 0}
    assert generate_from_schema(magic, "input: 5000") == {"input": 999}
    adder = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    }
    assert generate_from_schema(adder, "What is 3 + 4") == {"a": 3, "b": 4}
    assert generate_from_schema(adder, "add(1, 2) and not 7", call_name="add") == {
        "a": 1,
        "b": 2,
    }
    nested = {
        "$defs": {
            "Color": {"enum": ["red", "green"]},
            "Item": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "color": {"$ref": "#/$defs/Color"},
                    "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                },
                "required": ["name", "color"],
            },
        },
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
            "when": {"type": "string", "format": "date"},
            "flag": {"type": "boolean"},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "number"}]},
            "city": {"type": "string"},
        },
        "required": ["items", "when", "flag", "maybe"],
    }
    assert generate_from_schema(nested, "city is Paris, flag yes") == {
        "items": [{"name": "simulated name", "color": "red"}],
        "when": "2024-01-01",
        "flag": True,
        "maybe": 0,
        "city": "Paris",
    }
    assert generate_from_schema(None) == {}
    assert generate_from_schema({"type": "object", "properties": {}}) == {}


def test_quoted_strings_and_json_object() -> None:
    assert quoted_strings("it's 'a b' and \"c\" ok") == ["a b", "c"]
    body = _chat_body("m", "JSON with 'setup' and 'punchline' keys")
    assert json_object_answer("m", body) == {
        "setup": "simulated setup",
        "punchline": "simulated punchline",
    }
    assert json_object_answer("m", _chat_body("m", "hi")) == {"answer": "m answers: hi"}


def test_choose_tool_and_simulate() -> None:
    tools = [
        {"type": "function", "function": {"name": "alpha", "parameters": {}}},
        {"type": "function", "function": {"name": "beta", "parameters": {}}},
    ]
    assert choose_tool(_chat_body("m", "use beta", tools=tools))["name"] == "beta"
    assert choose_tool(_chat_body("m", "hello", tools=tools))["name"] == "alpha"
    assert choose_tool(_chat_body("m", "x", tools=tools, tool_choice="none")) is None
    assert choose_tool(_chat_body("m", "x")) is None
    after_tool = {
        "model": "m",
        "tools": tools,
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "tool", "tool_call_id": "c", "content": "r"},
        ],
    }
    assert choose_tool(after_tool) is None
    assert choose_tool({**after_tool, "tool_choice": "required"})["name"] == "alpha"
    turn = simulate(_chat_body("m", "use beta", tools=tools))
    assert turn.tool_call is not None
    assert turn.tool_call.name == "beta"
    assert turn.tool_call.arguments == "{}"
    assert turn.finish_reason == "tool_calls"
    assert turn == simulate(_chat_body("m", "use beta", tools=tools))  # deterministic
    chunks = stream_chunks(turn, response_id="r", created=0, include_usage=True)
    first = chunks[0]["choices"][0]["delta"]["tool_calls"][0]
    assert first["id"] == turn.tool_call.id
    assert first["function"] == {"name": "beta", "arguments": ""}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == turn.usage


def test_stop_and_validation() -> None:
    assert apply_stop("abc def", ["def", "c"]) == "ab"
    assert apply_stop("abc", "z") == "abc"
    assert apply_stop("abc", None) == "abc"
    with pytest.raises(RequestError):
        validate_request([])
    with pytest.raises(RequestError):
        validate_request(_chat_body("m", "x", max_tokens=0))
    with pytest.raises(RequestError):
        validate_request(_chat_body("m", "x", stop=[1]))
    with pytest.raises(RequestError):
        validate_request(
            _chat_body(
                "m",
                "x",
                tools=[{"type": "function", "function": {"name": "a"}}],
                tool_choice={"type": "function", "function": {"name": "b"}},
            )
        )
    validate_request(_chat_body("m", "x", temperature=0, seed=1, user="u"))


def test_model_behavior_validation() -> None:
    assert ModelBehavior.from_dict({"fail_first": 2}).fail_first == 2
    assert ModelBehavior(seed=3).to_dict()["seed"] == 3
    with pytest.raises(ValueError, match="unknown"):
        ModelBehavior.from_dict({"latency": 1})
    with pytest.raises(ValueError):
        ModelBehavior(failure_rate=1.5)
    with pytest.raises(ValueError):
        ModelBehavior(error_status=200)
    with pytest.raises(ValueError):
        ModelBehavior(token_delay=-1)
    with pytest.raises(TypeError):
        ModelBehavior(hang="yes")  # type: ignore[arg-type]
