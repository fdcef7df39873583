"""Run an ASGI app with uvicorn on a loopback port, in a background thread; wait for a condition."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

_START_TIMEOUT_S = 30.0


@contextmanager
def serve_app(app: Any, **options: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) and yield its ``/v1`` base URL.

    ``options`` go to ``uvicorn.Config`` (e.g. ``connection_options(...)``).
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            msg = "uvicorn did not start"
            raise RuntimeError(msg)
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` seconds passed; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())
