"""Connection hygiene: slowloris-style clients on raw sockets against the guarded server.

The app runs under uvicorn with ``connection_options(...)`` (what ``moa
serve`` passes), with short deadlines so that the tests are quick; ``moa
serve`` itself runs as a subprocess at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from langchain_moa import MoAChatModel
from langchain_moa.server import ServerSettings, create_app
from langchain_moa.server.connections import connection_options
from langchain_moa.testing import OpenAISimulator
from tests.integration_tests.server_harness import serve_app, wait_for

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
DROP_BOUND_S = 15.0  # generous: the deadline is 1 s, but the machine may be busy
QUESTION = {"model": "moa", "messages": [{"role": "user", "content": "Hi"}]}
REQUEST_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n"


@pytest.fixture(scope="module")
def sim() -> Iterator[OpenAISimulator]:
    with OpenAISimulator() as simulator:
        yield simulator


def _app(sim: OpenAISimulator) -> Any:
    llm = MoAChatModel(
        proposers=[sim.chat_model("p1")], aggregator=sim.chat_model("agg"), layers=2, max_retries=0
    )
    return create_app({"moa": llm}, settings=ServerSettings(body_timeout=BODY_TIMEOUT_S))


@pytest.fixture(scope="module")
def url(sim: OpenAISimulator) -> Iterator[str]:
    options = connection_options(header_timeout=HEADER_TIMEOUT_S)
    with serve_app(_app(sim), **options) as base_url:
        yield base_url


@contextmanager
def _sockets(url: str, count: int) -> Iterator[list[socket.socket]]:
    parts = urlsplit(url)
    with ExitStack() as stack:
        socks = []
        for _ in range(count):
            sock = stack.enter_context(socket.create_connection((parts.hostname, parts.port)))
            sock.setblocking(False)
            socks.append(sock)
        yield socks


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (what it sent before is read and dropped)."""
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def _until_closed(socks: list[socket.socket], step: Callable[[socket.socket], None]) -> float:
    """Call ``step`` on each open socket every 0.2 s until the server closed all; the time taken."""
    started = time.monotonic()
    pending = list(socks)
    while pending and time.monotonic() - started < DROP_BOUND_S:
        for sock in list(pending):
            if _closed(sock):
                pending.remove(sock)
                continue
            try:
                step(sock)
            except OSError:
                pending.remove(sock)
        time.sleep(0.2)
    assert not pending, f"{len(pending)} of {len(socks)} connections still open"
    return time.monotonic() - started


def _dribble(sock: socket.socket) -> None:
    sock.send(b"x")


def _idle(sock: socket.socket) -> None:
    pass


def test_dribbling_and_idle_clients_are_dropped_and_do_not_stop_others(url: str) -> None:
    with _sockets(url, 50) as dribbling, _sockets(url, 50) as idle:
        for sock in dribbling:
            sock.send(REQUEST_HEAD + b"X-Slow: ")
        # 100 connections held open: a real client is still served.
        answer = httpx.post(f"{url}/chat/completions", json=QUESTION, timeout=30)
        assert answer.status_code == 200, answer.text
        assert _until_closed(dribbling, _dribble) < DROP_BOUND_S
        assert _until_closed(idle, _idle) < DROP_BOUND_S
    assert httpx.post(f"{url}/chat/completions", json=QUESTION, timeout=30).status_code == 200


def _response(sock: socket.socket, step: Callable[[socket.socket], None]) -> bytes:
    """What the server sends until it closes ``sock``, calling ``step`` meanwhile."""
    received = bytearray()
    started = time.monotonic()
    while time.monotonic() - started < DROP_BOUND_S:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            with suppress(OSError):
                step(sock)
            time.sleep(0.2)
            continue
        except OSError:
            break
        if not data:
            break
        received += data
    return bytes(received)


def _status_and_error(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    assert b"application/json" in head
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return status, error


def test_a_body_that_comes_too_slowly_gets_408_and_the_connection_closed(url: str) -> None:
    with _sockets(url, 1) as (sock,):
        sock.send(REQUEST_HEAD + b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{")
        started = time.monotonic()
        raw = _response(sock, _dribble)  # one byte of the body every 0.2 s
        elapsed = time.monotonic() - started
    assert raw, "no answer: the slow body was accepted"
    status, error = _status_and_error(raw)
    assert (status, error["code"]) == (408, "timeout")
    assert elapsed < DROP_BOUND_S  # and the server closed the connection


def test_a_request_that_is_not_http_gets_400_in_openai_shape(url: str) -> None:
    with _sockets(url, 1) as (sock,):
        sock.send(b"NOT AN HTTP REQUEST\r\n\r\n")
        status, error = _status_and_error(_response(sock, _idle))
    assert status == 400
    assert error["type"] == "invalid_request_error"


def _health(url: str) -> httpx.Response:
    return httpx.get(url.removesuffix("/v1") + "/health", timeout=60)


def test_past_the_connection_limit_a_503_in_openai_shape(sim: OpenAISimulator) -> None:
    options = connection_options(limit_concurrency=4, header_timeout=60)
    with serve_app(_app(sim), **options) as url:
        answers: list[httpx.Response] = []

        def refused_yet() -> bool:
            answers.append(_health(url))
            return answers[-1].status_code == 503

        with _sockets(url, 4):
            assert wait_for(refused_yet, DROP_BOUND_S)  # once uvicorn took the 4 idle ones
        refused = answers[-1]
        assert refused.json()["error"]["type"] == "server_error"
        assert refused.headers["retry-after"] == "1"
        assert wait_for(lambda: _health(url).status_code == 200, DROP_BOUND_S)


# -- moa serve ---------------------------------------------------------------------------


@contextmanager
def _moa_serve(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``moa serve`` on a free port; its URL as soon as it prints ``Serving at``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "langchain_moa", "serve", "--port", "0", "--simulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "MOA_SERVER_API_KEYS": ""},
        start_new_session=True,
    )
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if line.startswith("Serving at "):
                threading.Thread(target=process.stdout.read, daemon=True).start()
                yield process, line.split()[2]
                return
        pytest.fail("moa serve did not print 'Serving at'")
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2])
def test_moa_serve_answers_as_soon_as_it_says_serving(workers: int) -> None:
    with _moa_serve("--layers", "2", "--workers", str(workers)) as (_, url):
        parts = urlsplit(url)
        # At once, on a raw socket (no client to set up first), and with no retry.
        with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.1 200 "), answer


@pytest.mark.timeout(120)
def test_moa_serve_drops_clients_that_dribble_headers_or_stay_idle() -> None:
    options = ("--header-timeout", "1", "--keep-alive-timeout", "1")
    with _moa_serve("--layers", "2", *options) as (_, url):
        with _sockets(url, 6) as (*dribbling, kept_alive):
            for sock in dribbling:
                sock.send(REQUEST_HEAD)
            kept_alive.send(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")  # then idle
            assert _until_closed(dribbling, _dribble) < DROP_BOUND_S
            assert _until_closed([kept_alive], _idle) < DROP_BOUND_S
        assert _health(url).status_code == 200
