"""What the server lets out: upstream addresses, credentials in logs, redirects.

The proposer that cannot reach its upstream is a small chat model that posts
with ``aiohttp``: its real connection error names the host and port, as many
provider clients' errors do.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult

from langchain_moa import MoAChatModel
from langchain_moa.server import ServerSettings, create_app
from langchain_moa.testing import OpenAISimulator
from tests.integration_tests.server_harness import serve_app

QUESTION = {"model": "moa", "messages": [{"role": "user", "content": "Hi"}]}
PASSWORD = "pw-4f9c1e7b"


class AiohttpChat(BaseChatModel):
    """A chat model that posts to ``url`` with aiohttp (only its errors matter here)."""

    url: str

    @property
    def _llm_type(self) -> str:
        return "aiohttp-chat"

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        raise NotImplementedError

    async def _agenerate(
        self, messages: list[BaseMessage], *args: Any, **kwargs: Any
    ) -> ChatResult:
        async with aiohttp.ClientSession() as session, session.post(self.url, json={}) as answer:
            answer.raise_for_status()
        raise NotImplementedError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def sim() -> Iterator[OpenAISimulator]:
    with OpenAISimulator() as simulator:
        yield simulator


def _ensembles(sim: OpenAISimulator) -> dict[str, MoAChatModel]:
    unreachable = AiohttpChat(url=f"http://127.0.0.1:{_free_port()}/v1/chat/completions")

    def moa(*proposers: BaseChatModel) -> MoAChatModel:
        return MoAChatModel(
            proposers=list(proposers), aggregator=sim.chat_model("agg"), layers=2, max_retries=0
        )

    return {"moa": moa(sim.chat_model("p1"), unreachable), "down": moa(unreachable)}


def _addresses(sim: OpenAISimulator) -> list[str]:
    return ["127.0.0.1", sim.base_url.split("//")[1].split("/")[0]]


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_addresses_stay_out_of_responses(sim: OpenAISimulator, stream: bool) -> None:
    with serve_app(create_app(_ensembles(sim))) as url:
        answer = httpx.post(
            f"{url}/chat/completions", json={**QUESTION, "stream": stream}, timeout=30
        )
        failed = httpx.post(f"{url}/chat/completions", json={**QUESTION, "model": "down"})
    assert answer.status_code == 200
    assert "[upstream]" in answer.text  # the cost reasons and the failed proposal's error
    assert "Cannot connect to host" in answer.text
    assert failed.status_code == 502
    assert "Cannot connect to host [upstream]" in failed.json()["error"]["message"]
    for address in _addresses(sim):
        assert address not in answer.text
        assert address not in failed.text


def test_the_operator_can_let_upstream_addresses_through(sim: OpenAISimulator) -> None:
    app = create_app(_ensembles(sim), settings=ServerSettings(expose_upstream=True))
    with serve_app(app) as url:
        answer = httpx.post(f"{url}/chat/completions", json=QUESTION, timeout=30)
        failed = httpx.post(f"{url}/chat/completions", json={**QUESTION, "model": "down"})
    reasons = answer.json()["moa"]["cost"]["reasons"]
    assert sim.base_url in reasons["p1"]
    assert "Cannot connect to host 127.0.0.1:" in failed.json()["error"]["message"]


def test_a_trailing_slash_gets_404_not_a_redirect_built_from_the_host_header(
    sim: OpenAISimulator,
) -> None:
    with serve_app(create_app(_ensembles(sim))) as url:
        answer = httpx.post(
            f"{url}/chat/completions/", json=QUESTION, headers={"Host": "evil.example"}
        )
        wrong_method = httpx.get(f"{url}/chat/completions")
    assert answer.status_code == 404
    assert "location" not in answer.headers
    assert "evil.example" not in answer.text
    assert answer.json()["error"]["message"] == "no such route: POST /v1/chat/completions/"
    assert wrong_method.status_code == 405
    assert set(wrong_method.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.timeout(120)
def test_moa_serve_logs_no_upstream_credentials(sim: OpenAISimulator) -> None:
    root = sim.base_url.split("//")[1]
    base_url = f"http://moa-user:{PASSWORD}@{root}"
    process = subprocess.Popen(
        [sys.executable, "-m", "langchain_moa", "serve", "--port", "0", "--base-url", base_url,
         "--proposer", "p1", "--proposer", "p2", "--aggregator", "agg", "--layers", "2",
         "--log-level", "debug", "--access-log"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "MOA_SERVER_API_KEYS": "", "OPENAI_API_KEY": "sk-unused-0123456789"},
        start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Serving at "):
                url = line.split()[2]
                answer = httpx.post(f"{url}/chat/completions", json=QUESTION, timeout=60)
                assert answer.status_code == 200, answer.text
                assert PASSWORD not in answer.text
                time.sleep(0.5)  # the request's log lines are written
                break
    finally:
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    log = "".join(lines) + output
    assert PASSWORD not in log
    assert "POST /v1/chat/completions" in log  # the log is on (the access log here)
    assert "HTTP Request:" not in log  # httpx's lines (every upstream URL) are not logged
    assert "moa-user:[REDACTED]@" in log  # the announced line-up names its (masked) server
