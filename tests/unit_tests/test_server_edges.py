"""The server's guards on their own: internal errors, upstream addresses, log masking, slots."""

from __future__ import annotations

import logging

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from langchain_moa import MoAChatModel
from langchain_moa.server import create_app
from langchain_moa.server.errors import InternalErrors
from langchain_moa.server.limits import CallerSlots
from langchain_moa.server.logs import RedactingFilter
from langchain_moa.server.upstream import hide_upstream, hide_upstream_in
from tests.unit_tests.fakes import RecordingChatModel

LEAKED = "sk-live-abcdefghijklmnop0123456789"


async def _failing(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError(f"the cache refused key {LEAKED}")


async def test_an_unexpected_error_is_a_json_500_logged_once_and_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="langchain_moa")
    transport = httpx.ASGITransport(app=InternalErrors(_failing))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answer = await client.get("/anything")
    assert answer.status_code == 500
    assert answer.json()["error"] == {
        "message": "internal error (RuntimeError); see the server's log",
        "type": "server_error",
        "param": None,
        "code": "server_error",
    }
    assert LEAKED not in answer.text
    [record] = [r for r in caplog.records if r.name.startswith("langchain_moa")]
    assert record.levelno == logging.ERROR
    assert "RuntimeError: the cache refused key [REDACTED]" in record.getMessage()
    assert LEAKED not in caplog.text


def test_create_app_guards_every_route() -> None:
    llm = MoAChatModel(
        proposers=[RecordingChatModel(name="p")], aggregator=RecordingChatModel(name="a"), layers=2
    )
    app = create_app({"moa": llm})
    assert [entry.cls for entry in app.user_middleware] == [InternalErrors]


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("no price at http://10.0.0.5:8000/v1/; give it", "no price at [upstream]; give it"),
        (
            "connect to host api.example.com:443 ssl:default",
            "connect to host [upstream] ssl:default",
        ),
        ("[Connect call failed ('10.0.0.5', 8000)]", "[Connect call failed [upstream]]"),
        ("url='https://u:[REDACTED]@gw.internal:9000/v1/chat'", "url='[upstream]'"),
        ("http://[::1]:8000/v1.", "[upstream]."),
        ("reached 192.168.1.20 then gave up", "reached [upstream] then gave up"),
        (
            "Qwen/Qwen1.5-72B-Chat, gpt-4.1 at 12:30:45",
            "Qwen/Qwen1.5-72B-Chat, gpt-4.1 at 12:30:45",
        ),
    ],
)
def test_upstream_addresses_are_hidden_and_model_names_kept(text: str, hidden: str) -> None:
    assert hide_upstream(text) == hidden


def test_model_output_in_details_is_left_as_it_is() -> None:
    details = {
        "proposals": [[{"text": "see http://example.com:80/a", "error": "at 10.0.0.1:80"}]],
        "cost": {"reasons": {"m": "no price at http://10.0.0.1/v1"}},
    }
    assert hide_upstream_in(details) == {
        "proposals": [[{"text": "see http://example.com:80/a", "error": "at [upstream]"}]],
        "cost": {"reasons": {"m": "no price at [upstream]"}},
    }


def test_the_log_filter_masks_arguments_of_any_type() -> None:
    url = httpx.URL("http://user:hunter2-secret@10.0.0.5:8000/v1/chat/completions")
    record = logging.LogRecord(
        "httpx", logging.INFO, __file__, 1, 'HTTP Request: %s %s "%d"', ("POST", url, 200), None
    )
    assert RedactingFilter().filter(record)
    message = record.getMessage()
    assert "hunter2-secret" not in message
    assert message.endswith('user:[REDACTED]@10.0.0.5:8000/v1/chat/completions "200"')


def test_a_slot_is_given_back_once_however_often_release_is_called() -> None:
    slots = CallerSlots(2)
    first, second = slots.try_acquire("key-1"), slots.try_acquire("key-1")
    assert first is not None
    assert second is not None
    assert slots.try_acquire("key-1") is None
    first()
    first()
    assert slots.busy("key-1") == 1
    second()
    assert slots.busy("key-1") == 0
