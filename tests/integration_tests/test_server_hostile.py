"""Hostile request bodies against the OpenAI-compatible server, over real HTTP.

Every body here is a client's mistake or attack: it must get a 4xx in
OpenAI's error shape (or 200 when a mutation happens to be a valid request),
never a 5xx or a traceback in the server's log, and it must not cost its key
a slot of its concurrency budget (32 by default). The fixed cases are the
reviewed findings; the generated corpus mutates a valid request with
hypothesis (wrong types, missing and extra fields, odd Unicode, lone
surrogates, deep nesting, cut text).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from langchain_moa import MoAChatModel
from langchain_moa.server import create_app
from langchain_moa.testing import OpenAISimulator
from tests.integration_tests.server_harness import serve_app

KEY = "hostile-test-key"
LOOKUP_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a word up.",
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
    },
}
VALID: dict[str, Any] = {
    "model": "moa",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Look up 'moa'"}], "name": "alice"},
    ],
    "temperature": 0.5,
    "max_tokens": 50,
    "stop": ["END"],
    "user": "alice",
    "tools": [LOOKUP_TOOL],
    "tool_choice": "auto",
}
STREAMED_JSON: dict[str, Any] = {
    "model": "moa",
    "messages": [{"role": "user", "content": "Give 'setup' and 'punchline'"}],
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "joke",
            "schema": {
                "type": "object",
                "properties": {"setup": {"type": "string"}, "punchline": {"type": "string"}},
                "required": ["setup", "punchline"],
            },
        },
    },
    "stream": True,
    "stream_options": {"include_usage": True},
    "seed": 7,
}
SURROGATE = "\ud800"


class _Records(logging.Handler):
    """Keeps every record that reaches it, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(self.format(record) for record in self.records)


class _Served:
    def __init__(self, url: str, app: Any, log: _Records, client: httpx.Client) -> None:
        self.url = url
        self.app = app
        self.log = log
        self.client = client

    def post(self, content: bytes | str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        return self.client.post(f"{self.url}/chat/completions", content=content, headers=headers)

    def busy_slots(self) -> int:
        """The key's slots in use, once a just finished stream gave its slot back."""
        slots = self.app.state.moa.slots
        deadline = time.monotonic() + 5
        while slots.busy("key-1") and time.monotonic() < deadline:
            time.sleep(0.01)
        return slots.busy("key-1")


@pytest.fixture(scope="module")
def served() -> Iterator[_Served]:
    with OpenAISimulator() as sim:
        llm = MoAChatModel(
            proposers=[sim.chat_model("p1"), sim.chat_model("p2")],
            aggregator=sim.chat_model("agg"),
            layers=2,
            max_retries=0,
        )
        app = create_app({"moa": llm}, api_keys=[KEY])
        with serve_app(app) as url, httpx.Client(timeout=60) as client:
            # After uvicorn configured its loggers (that drops earlier handlers).
            log = _Records()
            loggers = [logging.getLogger(name) for name in ("uvicorn", "langchain_moa")]
            for logger in loggers:
                logger.addHandler(log)
            try:
                yield _Served(url, app, log, client)
            finally:
                for logger in loggers:
                    logger.removeHandler(log)


def _raw(body: Any) -> str:
    return json.dumps(body)  # ensure_ascii: a lone surrogate is sent as a \ud800 escape


def _with(**fields: Any) -> str:
    return _raw({**VALID, **fields})


def _message(**fields: Any) -> str:
    return _raw({**VALID, "messages": [{"role": "user", "content": "x", **fields}]})


def _tool(**function: Any) -> str:
    return _with(tools=[{"type": "function", "function": {"name": "f", **function}}])


HOSTILE = [
    pytest.param(_with(tools=[{"function": {"name": "x"}}]), "tools[0].type", id="tool-no-type"),
    pytest.param(
        _with(tools=[{"type": "function", "function": {}}]),
        "tools[0].function.name",
        id="tool-no-name",
    ),
    pytest.param(
        _with(tools=[{"type": "function", "function": {"name": ""}}]),
        "tools[0].function.name",
        id="tool-empty-name",
    ),
    pytest.param("[" * 3000 + "]" * 3000, None, id="nested-3000"),
    pytest.param(_with(metadata=json.loads("[" * 100 + "]" * 100)), "metadata", id="nested-100"),
    pytest.param(
        _tool(parameters=json.loads('{"a":' * 70 + "1" + "}" * 70)),
        "tools",
        id="nested-70-in-a-tool",
    ),
    pytest.param(_with(seed=10**400), "seed", id="seed-400-digits"),
    pytest.param(_with(temperature=10**400), "temperature", id="temperature-400-digits"),
    pytest.param(_with(top_p=-(10**400)), "top_p", id="top-p-400-digits"),
    pytest.param(_with(frequency_penalty=10**400), "frequency_penalty", id="penalty-400-digits"),
    pytest.param(_with(max_tokens=10**30), "max_tokens", id="max-tokens-huge"),
    pytest.param(_with(max_completion_tokens=2**31), "max_completion_tokens", id="max-tokens-2-31"),
    pytest.param(_with(logit_bias={"1": 10**400}), "logit_bias", id="logit-bias-huge"),
    pytest.param(_with().replace("0.5", "1e400"), "temperature", id="float-overflow"),
    pytest.param(
        _tool(parameters={"type": [["object"]]}),
        "tools[0].function.parameters",
        id="tool-schema-invalid",
    ),
    pytest.param(
        _tool(parameters={"properties": {"a": {"type": "integer"}}}),
        "tools[0].function.parameters",
        id="tool-schema-no-type",
    ),
    pytest.param(
        _tool(parameters={"type": "string"}),
        "tools[0].function.parameters",
        id="tool-schema-not-an-object",
    ),
    pytest.param(
        _with(response_format={"type": "json_object", "json_schema": "x"}),
        "response_format",
        id="response-format-foreign-field",
    ),
    pytest.param(
        _message(content=[{"type": ["text"], "text": "x"}]),
        "messages[0].content[0].type",
        id="part-type-not-a-string",
    ),
    pytest.param(
        _message(content=[{"type": "text", "text": 5}]),
        "messages[0].content[0].text",
        id="text-part-not-a-string",
    ),
    pytest.param(
        _message(content=[{"type": "image_url", "image_url": {}}]),
        "messages[0].content[0].image_url",
        id="image-part-without-url",
    ),
    pytest.param(_with().replace('"temperature": 0.5', '"temperature": NaN'), None, id="nan"),
    pytest.param(_with().replace("50", "5" * 5000), None, id="5000-digits"),
    pytest.param(_with(model=f"mo{SURROGATE}a"), "model", id="surrogate-model"),
    pytest.param(_with(**{f"x{SURROGATE}": 1}), None, id="surrogate-field-name"),
    pytest.param(_with(user=SURROGATE), "user", id="surrogate-user"),
    pytest.param(_with(stop=["ok", f"end{SURROGATE}"]), "stop[1]", id="surrogate-stop"),
    pytest.param(_message(name=f"a{SURROGATE}"), "messages[0].name", id="surrogate-name"),
    pytest.param(_message(content=SURROGATE), "messages[0].content", id="surrogate-content"),
    pytest.param(
        _tool(description=f"adds{SURROGATE}"),
        "tools[0].function.description",
        id="surrogate-tool-description",
    ),
    pytest.param(_message(**{f"n{SURROGATE}": "x"}), "messages[0]", id="surrogate-message-key"),
    pytest.param(b"\xff\xfe{", None, id="not-utf8"),
]


def _check_error(response: httpx.Response) -> dict[str, Any]:
    """A 4xx whose body is OpenAI's error shape, in valid UTF-8, with no surrogate in it."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    text = response.content.decode("utf-8")  # strict: the body is valid UTF-8
    error = json.loads(text)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    shown = json.dumps(error, ensure_ascii=False)
    assert not any("\ud800" <= char <= "\udfff" for char in shown), "a raw surrogate was echoed"
    return error


def _check_quiet_log(served: _Served) -> None:
    text = served.log.text()
    assert "Traceback" not in text, text
    assert not [r for r in served.log.records if r.levelno >= logging.ERROR], text


@pytest.mark.parametrize(("body", "param"), HOSTILE)
def test_hostile_bodies_get_400_naming_the_field(
    served: _Served, body: str | bytes, param: str | None
) -> None:
    before = len(served.log.records)
    error = _check_error(served.post(body))
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert served.busy_slots() == 0
    assert served.log.records[before:] == []  # a client's mistake is not the server's error


def test_bad_requests_never_use_up_the_key(served: _Served) -> None:
    """The leak: each tool without a type kept a slot; 32 of them locked the key out."""
    for round_ in range(45):
        body, _ = HOSTILE[round_ % len(HOSTILE)].values
        _check_error(served.post(body))
    assert served.busy_slots() == 0
    answer = served.post(_raw(VALID))
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["role"] == "assistant"
    _check_quiet_log(served)


# -- a generated corpus: mutations of a valid request ------------------------------------

_ODD_TEXT = st.text(max_size=8) | st.sampled_from(
    ["", SURROGATE, f"a{SURROGATE}b", "\udfff", "\x00", "\u202e", "🙂" * 3, " "]
)
_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([10**400, -(10**400), 2**31, 2**63])
    | st.floats(allow_nan=False, allow_infinity=False)
    | _ODD_TEXT
)
_VALUES = st.recursive(
    _LEAVES,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(_ODD_TEXT, children, max_size=3)
    ),
    max_leaves=6,
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*path, index))


def _parent(body: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        body = body[step]
    return body


@st.composite
def _mutated(draw: st.DrawFn) -> str:
    body: Any = copy.deepcopy(draw(st.sampled_from([VALID, STREAMED_JSON])))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(body))))
        kind = draw(st.sampled_from(["replace", "delete", "add", "nest", "odd-text"]))
        if not path:
            body = draw(_VALUES) if kind == "replace" else body
            continue
        parent, step = _parent(body, path), path[-1]
        if kind == "replace":
            parent[step] = draw(_VALUES)
        elif kind == "delete":
            del parent[step]
        elif kind == "add" and isinstance(parent[step], dict):
            parent[step][draw(_ODD_TEXT)] = draw(_VALUES)
        elif kind == "add" and isinstance(parent[step], list):
            parent[step].append(draw(_VALUES))
        elif kind == "nest":
            value = parent[step]
            for _ in range(draw(st.integers(30, 120))):
                value = [value]
            parent[step] = value
        else:
            parent[step] = draw(_ODD_TEXT)
    raw = json.dumps(body)
    if draw(st.integers(0, 9)) == 0:  # now and then, cut text
        raw = raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    return raw


def _check_answer(response: httpx.Response) -> None:
    """A 200 is a completion, or a stream of chunks that ends well."""
    if not response.headers["content-type"].startswith("text/event-stream"):
        assert response.json()["object"] == "chat.completion"
        return
    events = [line.removeprefix("data: ") for line in response.text.splitlines()]
    events = [event for event in events if event and not event.startswith(":")]
    assert events[-1] == "[DONE]"
    assert all("error" not in json.loads(event) for event in events[:-1])


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(body=_mutated())
def _answered_well(served: _Served, body: str) -> None:
    response = served.post(body)
    if response.status_code == 200:
        _check_answer(response)
    else:
        _check_error(response)
    assert served.busy_slots() == 0


def test_generated_malformed_bodies_get_4xx_or_a_valid_answer(served: _Served) -> None:
    _answered_well(served)
    answer = served.post(_raw(VALID))
    assert answer.status_code == 200, answer.text
    _check_quiet_log(served)
