"""The OpenAI-compatible server, over real HTTP, with the official ``openai`` client.

The ensembles' inner models are served by the simulator on loopback; the app
runs under uvicorn in a background thread (``server_harness``), and ``moa
serve`` itself runs as a subprocess at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from langchain_moa import MoAChatModel
from langchain_moa.server import ServerSettings, create_app
from langchain_moa.testing import ModelBehavior, OpenAISimulator
from tests.integration_tests.server_harness import serve_app, wait_for
from tests.simulated_usage import moa_lite_usage

KEY = "test-key-1"
OTHER_KEY = "test-key-2"
LEAKED = "sk-live-abcdefghijklmnop0123456789"
QUESTION = "Why is the sky blue?"
ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


def _ensembles(sim: OpenAISimulator) -> dict[str, MoAChatModel]:
    def moa(proposers: list[str], aggregator: str, **fields: Any) -> MoAChatModel:
        return MoAChatModel(
            proposers=[sim.chat_model(name) for name in proposers],
            aggregator=ChatOpenAI(
                base_url=sim.base_url,
                api_key=fields.pop("key", "simulator"),
                model=aggregator,
                max_retries=0,
                stream_usage=True,
            ),
            layers=2,
            **{"max_retries": 0, **fields},
        )

    return {
        "moa": moa(["p1", "p2"], "agg"),
        "failing": moa(["bad1", "bad2"], "agg"),
        "leaky": moa(["p1"], "leaky-agg", key=LEAKED),
        "timeout": moa(["slow"], "agg", proposer_timeout=0.2),
        "hang": moa(["hang-p"], "agg"),
        "dripping": moa(["p1"], "drip-agg"),
        "broken": moa(["p1"], "broken-agg"),
    }


BEHAVIORS = {
    "bad1": ModelBehavior(error_status=500),
    "bad2": ModelBehavior(error_status=503),
    "leaky-agg": ModelBehavior(error_status=401, echo_key=True),
    "slow": ModelBehavior(first_token_latency=5),
    "hang-p": ModelBehavior(hang=True),
    "drip-agg": ModelBehavior(token_delay=0.1),
    "broken-agg": ModelBehavior(die_after_tokens=2),
}


@pytest.fixture(scope="module")
def sim() -> Iterator[OpenAISimulator]:
    with OpenAISimulator(behaviors=BEHAVIORS) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def base_url(sim: OpenAISimulator) -> Iterator[str]:
    app = create_app(_ensembles(sim), api_keys=[KEY, OTHER_KEY])
    with serve_app(app) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=30) as api:
        yield api


def _expected(question: str = QUESTION) -> str:
    return f"agg read 2 references [p1, p2] and answers: {question}"


def _usage_total(details: dict[str, Any]) -> int:
    calls = [p for layer in details["proposals"] for p in layer] + [details["aggregator"]]
    return sum(call["usage"]["total_tokens"] for call in calls)


# -- the openai client: sync, async, streaming ----------------------------------------


def test_models_are_listed_and_retrieved(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids == ["moa", "failing", "leaky", "timeout", "hang", "dripping", "broken"]
    assert client.models.retrieve("moa").owned_by == "langchain-moa"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_health_needs_no_key(base_url: str) -> None:
    answer = httpx.get(base_url.removesuffix("/v1") + "/health")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


def test_sync_completion_with_summed_usage_and_moa_details(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="moa", messages=[{"role": "user", "content": QUESTION}]
    )
    choice = answer.choices[0]
    assert choice.message.content == _expected()
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert answer.model == "moa"
    assert answer.id.startswith("chatcmpl-")
    details = answer.model_extra["moa"]
    assert [[p["model"] for p in layer] for layer in details["proposals"]] == [["p1", "p2"]]
    assert details["proposals"][0][0]["text"] == f"p1 answers: {QUESTION}"
    assert details["aggregator"]["model"] == "agg"
    assert details["failed_proposers"] == 0
    assert answer.usage is not None
    assert answer.usage.total_tokens == _usage_total(details)
    assert answer.usage.total_tokens == moa_lite_usage(QUESTION, proposers=2)["total_tokens"]
    assert answer.usage.prompt_tokens + answer.usage.completion_tokens == answer.usage.total_tokens


async def test_async_completion(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0) as api:
        answers = await asyncio.gather(
            *(
                api.chat.completions.create(
                    model="moa", messages=[{"role": "user", "content": f"{QUESTION} {i}"}]
                )
                for i in range(5)
            )
        )
    assert [a.choices[0].message.content for a in answers] == [
        _expected(f"{QUESTION} {i}") for i in range(5)
    ]


def test_sync_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="moa",
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == _expected()
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.total_tokens == _usage_total(last.model_extra["moa"])
    assert last.usage.total_tokens == moa_lite_usage(QUESTION, proposers=2)["total_tokens"]
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


async def test_async_stream(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0) as api:
        stream = await api.chat.completions.create(
            model="moa", messages=[{"role": "user", "content": QUESTION}], stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == _expected()
    assert all(c.usage is None for c in chunks)
    assert "moa" in chunks[-1].model_extra  # on the finish chunk without include_usage


def test_stream_wire_format(base_url: str) -> None:
    body = {"model": "moa", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line and not line.startswith(":")]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0].removeprefix("data: "))
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"]["role"] == "assistant"


# -- messages of every role, tools, response_format, parameters ----------------------


def test_every_role_reaches_every_agent(client: openai.OpenAI, sim: OpenAISimulator) -> None:
    sim.clear_requests()
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": [{"type": "text", "text": "What is add(2, 3)?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
    ]
    answer = client.chat.completions.create(model="moa", messages=messages, tools=[ADD_TOOL])
    assert answer.choices[0].message.content == "agg used add -> 5 and answers: What is add(2, 3)?"
    for model in ("p1", "p2", "agg"):
        sent = sim.requests_for(model)[-1].body["messages"]
        roles = [m["role"] for m in sent]
        assert roles[-3:] == ["user", "assistant", "tool"], (model, roles)
        assert "developer" in roles
        assert sent[-2]["tool_calls"][0]["function"]["name"] == "add"


def test_tool_call_plain_and_streamed(client: openai.OpenAI, sim: OpenAISimulator) -> None:
    sim.clear_requests()
    messages = [{"role": "user", "content": "Please add(2, 3)"}]
    answer = client.chat.completions.create(
        model="moa", messages=messages, tools=[ADD_TOOL], parallel_tool_calls=False
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("add", {"a": 2, "b": 3})
    aggregator = sim.requests_for("agg")[-1].body
    assert aggregator["parallel_tool_calls"] is False
    assert sim.requests_for("p1")[-1].body["tool_choice"] == "none"

    with client.chat.completions.stream(
        model="moa",
        messages=messages,
        tools=[ADD_TOOL],
        tool_choice={"type": "function", "function": {"name": "add"}},
    ) as stream:
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls[0]
    assert streamed.function.name == "add"
    assert json.loads(streamed.function.arguments) == {"a": 2, "b": 3}
    assert final.choices[0].finish_reason == "tool_calls"
    assert sim.requests_for("agg")[-1].body["tool_choice"] == {
        "type": "function",
        "function": {"name": "add"},
    }


class Joke(BaseModel):
    setup: str
    punchline: str


def test_response_format_json_schema_and_json_object(client: openai.OpenAI) -> None:
    parsed = client.chat.completions.parse(
        model="moa",
        messages=[{"role": "user", "content": "Tell a joke with setup 'Why?' punchline 'Because'"}],
        response_format=Joke,
    )
    assert parsed.choices[0].message.parsed == Joke(setup="Why?", punchline="Because")

    answer = client.chat.completions.create(
        model="moa",
        messages=[{"role": "user", "content": "Give 'setup' and 'punchline' as JSON"}],
        response_format={"type": "json_object"},
    )
    assert json.loads(answer.choices[0].message.content) == {
        "setup": "simulated setup",
        "punchline": "simulated punchline",
    }

    with client.chat.completions.stream(
        model="moa",
        messages=[{"role": "user", "content": "Tell a joke with setup 'A' punchline 'B'"}],
        response_format=Joke,
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == Joke(setup="A", punchline="B")


def test_parameters_go_to_the_aggregator(client: openai.OpenAI, sim: OpenAISimulator) -> None:
    sim.clear_requests()
    answer = client.chat.completions.create(
        model="moa",
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0.2,
        top_p=0.5,
        max_completion_tokens=3,
        stop=["never"],
        seed=7,
        user="tester",
    )
    assert answer.choices[0].message.content == "agg read 2 "
    assert answer.choices[0].finish_reason == "length"
    sent = sim.requests_for("agg")[-1].body
    assert sent["temperature"] == 0.2
    assert sent["top_p"] == 0.5
    assert sent["stop"] == ["never"]
    assert sent["seed"] == 7
    assert 3 in (sent.get("max_tokens"), sent.get("max_completion_tokens"))
    proposer = sim.requests_for("p1")[-1].body
    assert "seed" not in proposer
    assert proposer.get("temperature") != 0.2


def test_details_can_be_left_out(sim: OpenAISimulator) -> None:
    app = create_app(
        {"moa": _ensembles(sim)["moa"]}, settings=ServerSettings(include_moa_details=False)
    )
    with serve_app(app) as url, openai.OpenAI(base_url=url, api_key="x", max_retries=0) as api:
        answer = api.chat.completions.create(
            model="moa", messages=[{"role": "user", "content": "Q"}]
        )
        chunks = list(
            api.chat.completions.create(
                model="moa",
                messages=[{"role": "user", "content": "Q"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert "moa" not in (answer.model_extra or {})
    # Without the details the usage is still every call's, as the simulator counted it.
    usage = moa_lite_usage("Q", proposers=2)
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
        usage["input_tokens"],
        usage["output_tokens"],
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == usage["total_tokens"]
    assert all("moa" not in (c.model_extra or {}) for c in chunks)


# -- errors ----------------------------------------------------------------------------


def _post(base_url: str, body: Any, key: str | None = KEY, timeout: float = 30) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    raw = isinstance(body, (bytes, str)) or hasattr(body, "__next__")
    content = body if raw else json.dumps(body)
    headers["Content-Type"] = "application/json"
    return httpx.post(
        f"{base_url}/chat/completions", content=content, headers=headers, timeout=timeout
    )


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": "moa", "messages": [{"role": "user", "content": "x"}], **extra}


BAD_REQUESTS = [
    (b"{not json", None),
    ({"model": "moa"}, "messages"),
    ({"model": "moa", "messages": []}, "messages"),
    ({"model": "moa", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    (_body(temperature=3), "temperature"),
    (_body(n=2), "n"),
    (_body(bogus=1), "bogus"),
    (_body(logprobs=True), "logprobs"),
    (_body(tool_choice="required"), "tool_choice"),
    ({"model": "moa", "messages": [{"role": "system", "content": "only"}]}, "messages"),
]


@pytest.mark.parametrize(("body", "param"), BAD_REQUESTS)
def test_bad_requests_get_400_naming_the_field(
    base_url: str, body: Any, param: str | None, sim: OpenAISimulator
) -> None:
    before = len(sim.requests)
    error = _error(_post(base_url, body), 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert len(sim.requests) == before  # refused before any provider call


def test_bad_request_through_the_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="moa", messages=[{"role": "user", "content": "x"}], temperature=-1
        )
    assert caught.value.param == "temperature"


def test_authentication(base_url: str) -> None:
    for key in (None, "wrong-key"):
        response = _post(base_url, {"model": "moa", "messages": []}, key=key)
        assert _error(response, 401)["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"
        assert "wrong-key" not in response.text
    with (
        openai.OpenAI(base_url=base_url, api_key="nope", max_retries=0) as api,
        pytest.raises(openai.AuthenticationError),
    ):
        api.models.list()
    with openai.OpenAI(base_url=base_url, api_key=OTHER_KEY, max_retries=0) as api:
        assert api.models.list().data


def test_unknown_model_and_route_get_404(base_url: str) -> None:
    error = _error(
        _post(base_url, {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}), 404
    )
    assert (error["param"], error["code"]) == ("model", "model_not_found")
    response = httpx.get(f"{base_url}/nowhere", headers={"Authorization": f"Bearer {KEY}"})
    _error(response, 404)


def test_size_limits_get_413(sim: OpenAISimulator) -> None:
    settings = ServerSettings(max_body_bytes=2000, max_messages=3)
    app = create_app({"moa": _ensembles(sim)["moa"]}, settings=settings)
    with serve_app(app) as url:
        big = {"model": "moa", "messages": [{"role": "user", "content": "x" * 5000}]}
        assert _error(_post(url, big, key=None), 413)["code"] == "request_too_large"
        chunked = _post(url, iter_chunks(json.dumps(big).encode()), key=None)
        _error(chunked, 413)
        many = {"model": "moa", "messages": [{"role": "user", "content": "x"}] * 4}
        assert _error(_post(url, many, key=None), 413)["param"] == "messages"
        fine = {"model": "moa", "messages": [{"role": "user", "content": "x"}] * 3}
        assert _post(url, fine, key=None).status_code == 200


def iter_chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), 500):
        yield data[start : start + 500]


def _post_and_time_out(url: str, body: dict[str, Any]) -> None:
    with pytest.raises(httpx.ReadTimeout):
        _post(url, body, timeout=3)


def test_concurrency_limit_per_key_gets_429(sim: OpenAISimulator) -> None:
    app = create_app(
        {"hang": _ensembles(sim)["hang"], "moa": _ensembles(sim)["moa"]},
        api_keys=[KEY, OTHER_KEY],
        settings=ServerSettings(max_concurrency_per_key=1, retry_after_s=2),
    )
    with serve_app(app) as url:
        body = {"model": "hang", "messages": [{"role": "user", "content": "wait"}]}
        pending = threading.Thread(target=_post_and_time_out, args=(url, body))
        before = len(sim.requests_for("hang-p"))
        pending.start()
        assert wait_for(lambda: len(sim.requests_for("hang-p")) > before)
        refused = _post(url, {"model": "moa", "messages": [{"role": "user", "content": "x"}]})
        error = _error(refused, 429)
        assert refused.headers["retry-after"] == "2"
        assert error["type"] == "requests"
        other = _post(
            url, {"model": "moa", "messages": [{"role": "user", "content": "x"}]}, key=OTHER_KEY
        )
        assert other.status_code == 200  # another key has its own budget
        pending.join()
        # the timed-out client's slot comes back once its run is cancelled
        assert wait_for(
            lambda: (
                _post(
                    url, {"model": "moa", "messages": [{"role": "user", "content": "x"}]}
                ).status_code
                == 200
            )
        )


def test_failed_proposers_get_502_with_causes(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="failing", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502
    message = caught.value.message
    assert "bad1" in message
    assert "bad2" in message
    assert "Error code: 500" in message


def test_failed_aggregator_gets_502_with_the_key_masked(
    base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="langchain_moa.server")
    response = _post(
        base_url, {"model": "leaky", "messages": [{"role": "user", "content": "secret question"}]}
    )
    error = _error(response, 502)
    assert "leaky-agg" in error["message"]
    assert "AuthenticationError" in error["message"]
    assert LEAKED not in response.text
    assert "[REDACTED]" in error["message"]
    assert LEAKED not in caplog.text
    assert "secret question" not in caplog.text  # request bodies are never logged
    assert "502" in caplog.text


def test_timeouts_get_504(client: openai.OpenAI, sim: OpenAISimulator) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="timeout", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 504
    assert "ProposerTimeoutError" in caught.value.message

    app = create_app(
        {"hang": _ensembles(sim)["hang"]}, settings=ServerSettings(request_timeout=0.3)
    )
    with serve_app(app) as url:
        started = time.monotonic()
        response = _post(
            url, {"model": "hang", "messages": [{"role": "user", "content": "x"}]}, key=None
        )
        assert _error(response, 504)["code"] == "timeout"
        assert time.monotonic() - started < 5
    assert wait_for(lambda: sim.in_flight == 0)


def test_an_error_after_the_first_token_ends_the_stream_with_an_error_event(
    client: openai.OpenAI,
) -> None:
    stream = client.chat.completions.create(
        model="broken", messages=[{"role": "user", "content": QUESTION}], stream=True
    )
    received: list[str | None] = []

    def read() -> None:
        received.extend(chunk.choices[0].delta.content for chunk in stream)

    with pytest.raises(openai.APIError) as caught:
        read()
    assert received  # the first tokens arrived before the aggregator's stream broke
    assert "broken-agg" in str(caught.value)


# -- a client that goes away cancels the inner calls ----------------------------------


def test_disconnect_cancels_inner_calls(base_url: str, sim: OpenAISimulator) -> None:
    before = len(sim.requests_for("hang-p"))
    with (
        openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=0.5) as api,
        pytest.raises(openai.APITimeoutError),
    ):
        api.chat.completions.create(model="hang", messages=[{"role": "user", "content": "x"}])
    assert len(sim.requests_for("hang-p")) == before + 1
    assert wait_for(lambda: sim.in_flight == 0, 5), "the proposer's HTTP call was not cancelled"


def test_disconnect_mid_stream_cancels_the_aggregator(base_url: str, sim: OpenAISimulator) -> None:
    question = " ".join(["word"] * 100)  # about 10 s of tokens at 0.1 s each
    with openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0) as api:
        stream = api.chat.completions.create(
            model="dripping", messages=[{"role": "user", "content": question}], stream=True
        )
        for count, _ in enumerate(stream):
            if count == 2:
                break
        assert sim.in_flight == 1  # the aggregator is still writing
        stream.close()
    assert wait_for(lambda: sim.in_flight == 0, 5), "the aggregator's stream was not cancelled"


# -- moa serve -------------------------------------------------------------------------


def _serve(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """Start ``moa serve`` and return it with its base URL (from its 'Serving at' line)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "langchain_moa", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Serving at "):
            url = line.split()[2]
            threading.Thread(target=process.stdout.read, daemon=True).start()
            wait_for(lambda: _healthy(url), 60)  # noqa: B023 - called before the loop goes on
            return process, url
    _stop(process)
    pytest.fail(f"moa serve did not start: {''.join(lines)}")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url.removesuffix("/v1") + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            return process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def _config(tmp_path: Path, sim: OpenAISimulator) -> Path:
    path = tmp_path / "moa.toml"
    path.write_text(
        f"""
[defaults]
base_url = "{sim.base_url}"
temperature = 0.5

[ensembles.team-a]
proposers = ["p1", "p2"]
aggregator = "agg"
layers = 2

[ensembles.team-b]
proposers = ["p1", {{ model = "p2", base_url = "{sim.base_url}" }}]
aggregator = "agg"
layers = 3
proposer_timeout = 30
""",
        encoding="utf-8",
    )
    return path


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2])
def test_moa_serve_with_a_config_file(tmp_path: Path, sim: OpenAISimulator, workers: int) -> None:
    process, url = _serve(
        "--config", str(_config(tmp_path, sim)), "--workers", str(workers),
        env={"MOA_SERVER_API_KEYS": "k1,k2"},
    )  # fmt: skip
    try:
        with openai.OpenAI(base_url=url, api_key="k2", max_retries=0, timeout=30) as api:
            assert [m.id for m in api.models.list()] == ["team-a", "team-b"]
            answer = api.chat.completions.create(
                model="team-a", messages=[{"role": "user", "content": QUESTION}]
            )
            assert answer.choices[0].message.content == _expected()
            streamed = "".join(
                c.choices[0].delta.content or ""
                for c in api.chat.completions.create(
                    model="team-b", messages=[{"role": "user", "content": QUESTION}], stream=True
                )
            )
            assert streamed == _expected()
        with (
            openai.OpenAI(base_url=url, api_key="k3", max_retries=0) as api,
            pytest.raises(openai.AuthenticationError),
        ):
            api.models.list()
    finally:
        assert _stop(process) == 0


@pytest.mark.timeout(120)
def test_moa_serve_without_configuration_serves_the_simulated_line_up() -> None:
    env = {"OPENAI_BASE_URL": "", "OPENAI_API_KEY": "", "TOGETHER_API_KEY": ""}
    process, url = _serve("--layers", "2", env=env)
    try:
        with openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=30) as api:
            assert [m.id for m in api.models.list()] == ["moa"]
            answer = api.chat.completions.create(
                model="moa", messages=[{"role": "user", "content": "Hi"}]
            )
        assert answer.choices[0].message.content.startswith(
            "Qwen/Qwen1.5-72B-Chat read 6 references"
        )
    finally:
        assert _stop(process) == 0


def _refused(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "langchain_moa", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MOA_SERVER_API_KEYS": "", **(env or {})},
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_moa_serve_refuses_a_public_address_without_keys() -> None:
    line = _refused("--host", "0.0.0.0", "--simulate")
    assert line.startswith("moa serve: error: refusing to listen on 0.0.0.0 without API keys")


def test_moa_serve_refuses_keys_in_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[ensembles.x]\nproposers = ["a"]\naggregator = "a"\napi_key = "sk-abc"\n')
    line = _refused("--config", str(path))
    assert "api_key is not allowed here: keys come only from the environment" in line
    assert "sk-abc" not in line


def test_moa_serve_names_a_missing_provider_key(tmp_path: Path) -> None:
    path = tmp_path / "env.toml"
    path.write_text(
        '[ensembles.x]\nproposers = ["a"]\naggregator = "a"\napi_key_env = "MOA_TEST_UNSET_KEY"\n'
    )
    line = _refused("--config", str(path), env={"MOA_TEST_UNSET_KEY": ""})
    assert "MOA_TEST_UNSET_KEY is not set" in line
