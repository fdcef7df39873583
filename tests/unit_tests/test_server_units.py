"""The server's parts on their own: keys, request mapping, chunks, error statuses, config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from langchain_core.messages import AIMessageChunk, SystemMessage

from langchain_moa.errors import AggregatorFailedError, ProposersFailedError, ProviderError
from langchain_moa.lineups import LineUp, preset_lineup
from langchain_moa.server.auth import ANONYMOUS, KeyChecker, check_bind, server_keys
from langchain_moa.server.config import ConfigError, load_config
from langchain_moa.server.errors import RequestTimeoutError, upstream_error
from langchain_moa.server.requests import parse_chat_request
from langchain_moa.server.responses import ChunkWriter, usage_object
from langchain_moa.server.settings import ServerSettings
from langchain_moa.state import Proposal
from langchain_moa.wire import RequestError


def test_keys_come_from_arguments_and_the_environment() -> None:
    keys = server_keys(["a", " b "], {"MOA_SERVER_API_KEYS": "c, d,,a"})
    assert keys == ["a", "b", "c", "d"]
    assert server_keys([], {}) == []


def test_key_checker_names_callers_by_position_never_by_key() -> None:
    checker = KeyChecker(["first-key", "second-key"])
    assert checker.caller("Bearer second-key") == "key-2"
    assert checker.caller("bearer first-key") == "key-1"
    assert checker.caller("Bearer first-ke") is None
    assert checker.caller("Basic second-key") is None
    assert checker.caller(None) is None
    assert KeyChecker([]).caller(None) == ANONYMOUS


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.1.2.3"])
def test_loopback_needs_no_keys(host: str) -> None:
    check_bind(host, has_keys=False, insecure_no_auth=False)


def test_a_public_address_needs_keys_or_consent() -> None:
    with pytest.raises(ValueError, match=r"refusing to listen on 0\.0\.0\.0 without API keys"):
        check_bind("0.0.0.0", has_keys=False, insecure_no_auth=False)
    check_bind("0.0.0.0", has_keys=True, insecure_no_auth=False)
    check_bind("0.0.0.0", has_keys=False, insecure_no_auth=True)


def test_settings_refuse_unusable_limits() -> None:
    with pytest.raises(ValueError, match="max_messages"):
        ServerSettings(max_messages=0)
    with pytest.raises(ValueError, match="request_timeout"):
        ServerSettings(request_timeout=float("inf"))


def _request(**extra: object) -> dict[str, object]:
    return {"model": "moa", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_parameters_map_onto_call_arguments() -> None:
    chat = parse_chat_request(
        _request(
            stop="END",
            max_tokens=50,
            max_completion_tokens=20,
            temperature=0,
            response_format={"type": "text"},
            seed=3,
            metadata={"ignored": "yes"},
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chat.call_kwargs == {"stop": ["END"], "max_tokens": 20, "temperature": 0, "seed": 3}
    assert chat.stream
    assert chat.include_usage


def test_developer_messages_keep_their_role() -> None:
    body = _request()
    body["messages"] = [{"role": "developer", "content": "be brief"}, *body["messages"]]  # type: ignore[misc]
    first = parse_chat_request(body).messages[0]
    assert isinstance(first, SystemMessage)
    assert first.additional_kwargs["__openai_role__"] == "developer"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_p": 1.5}, "top_p"),
        ({"seed": 1.5}, "seed"),
        ({"stream": "yes"}, "stream"),
        ({"user": 5}, "user"),
        ({"logit_bias": {"1": "x"}}, "logit_bias"),
        ({"modalities": ["audio"]}, "modalities"),
        ({"functions": []}, "functions"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ],
)
def test_refused_parameters_name_the_field(extra: dict[str, object], param: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_chat_request(_request(**extra))
    assert caught.value.param == param


def test_chunks_carry_role_tool_calls_finish_usage_and_details() -> None:
    writer = ChunkWriter(
        response_id="chatcmpl-1", created=1, model="moa", include_usage=True, details=True
    )
    first = writer.chunks(
        AIMessageChunk(
            content="",
            tool_call_chunks=[{"name": "add", "args": '{"a":', "id": "call_9", "index": 0}],
        )
    )
    later = writer.chunks(
        AIMessageChunk(
            content="", tool_call_chunks=[{"name": None, "args": " 1}", "id": None, "index": 0}]
        )
    )
    last = AIMessageChunk(
        content="",
        usage_metadata={"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
        response_metadata={"finish_reason": "tool_calls", "proposals": [[]], "degraded": False},
    )
    assert writer.chunks(last) == []
    closing = writer.closing()
    delta = first[0]["choices"][0]["delta"]
    assert delta["role"] == "assistant"
    assert delta["tool_calls"] == [
        {
            "index": 0,
            "id": "call_9",
            "type": "function",
            "function": {"name": "add", "arguments": '{"a":'},
        }
    ]
    assert later[0]["choices"][0]["delta"] == {
        "tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]
    }
    assert closing[0]["choices"][0]["finish_reason"] == "tool_calls"
    assert closing[-1]["choices"] == []
    assert closing[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert closing[-1]["moa"] == {"proposals": [[]], "degraded": False}
    assert all(chunk["usage"] is None for chunk in [*first, *later, closing[0]])


def test_usage_details() -> None:
    usage = usage_object(
        {
            "input_tokens": 10,
            "output_tokens": 5,
            "total_tokens": 15,
            "input_token_details": {"cache_read": 4},
            "output_token_details": {"reasoning": 2},
        }
    )
    assert usage == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    assert usage_object(None) is None


def _failed(error: str) -> Proposal:
    return Proposal(layer=1, index=0, model="m", text=None, usage=None, latency_s=1.0, error=error)


def test_upstream_errors_get_honest_statuses() -> None:
    timeouts = ProposersFailedError(1, 1, [_failed("ProposerTimeoutError: no answer within 1s")])
    assert upstream_error(timeouts).status == 504
    mixed = ProposersFailedError(
        1,
        1,
        [_failed("ProposerTimeoutError: late"), _failed("RateLimitError: sk-abcdefghijklmnop")],
    )
    answer = upstream_error(mixed)
    assert answer.status == 502
    assert "sk-abcdefghijklmnop" not in answer.message
    aggregator = AggregatorFailedError("agg", TimeoutError("slow"), [])
    aggregator.__cause__ = ProviderError("AggregatorTimeoutError", "no answer within 2s")
    assert upstream_error(aggregator).status == 504
    refused = AggregatorFailedError("agg", ValueError("bad"), [])
    refused.__cause__ = ProviderError("BadRequestError", "bad")
    assert upstream_error(refused).status == 502
    assert upstream_error(RequestTimeoutError(), 5).status == 504
    crash = upstream_error(KeyError("secret detail"))
    assert crash.status == 500
    assert "secret detail" not in crash.message


def test_config_file(tmp_path: Path) -> None:
    path = tmp_path / "moa.toml"
    path.write_text(
        """
[defaults]
base_url = "http://localhost:11434/v1"
layers = 2

[ensembles.local]
proposers = ["llama3.1", { model = "gpt-4o-mini", api_key_env = "OPENAI_API_KEY" }]
aggregator = "llama3.1"
proposer_timeout = 30

[ensembles.deep]
proposers = ["qwen2.5"]
aggregator = "qwen2.5"
layers = 4
"""
    )
    local, deep = load_config(path)
    assert (local.name, local.layers, deep.layers) == ("local", 2, 4)
    assert local.proposers[0].base_url == "http://localhost:11434/v1"
    assert local.proposers[0].api_key_env is None
    assert local.proposers[1].api_key_env == "OPENAI_API_KEY"
    assert local.proposers[1].base_url == "http://localhost:11434/v1"  # inherited
    assert local.proposers[1].key_required
    assert local.options == {"proposer_timeout": 30}
    assert LineUp.from_dict(local.to_dict()) == local


_X = '[ensembles.x]\nproposers = ["a"]\n'
CONFIG_ERRORS = [
    (_X + 'aggregator = "a"\napi_key = "sk-1"', "api_key is not allowed"),
    (_X + 'aggregator = { model = "a", api_key = "k" }', "api_key is not allowed"),
    (_X + 'aggregator = "a"\nturbo = true', "unknown setting 'turbo'"),
    (_X, "aggregator is missing"),
    ('[ensembles.x]\nproposers = []\naggregator = "a"', "proposers must be a non-empty list"),
    ("[defaults]\nlayers = 2", "no [ensembles.NAME] table"),
    ("not toml ==", "is not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), CONFIG_ERRORS)
def test_config_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(path)


def test_preset_line_ups_need_their_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    lineup = preset_lineup("together-moa-lite")
    assert (lineup.name, lineup.layers, len(lineup.proposers)) == ("together-moa-lite", 2, 6)
    with pytest.raises(ValueError, match="TOGETHER_API_KEY is not set"):
        lineup.build()
    with pytest.raises(ValueError, match="unknown preset"):
        preset_lineup("gpt-5")


def test_the_core_package_does_not_import_the_server_stack() -> None:
    code = (
        "import sys, langchain_moa, langchain_moa.cli, langchain_moa.lineups, langchain_moa.wire\n"
        "import langchain_moa.testing.server\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(loaded & {'fastapi', 'uvicorn', 'sse_starlette'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
