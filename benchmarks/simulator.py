"""The OpenAI simulator in a child process, so that it has its own interpreter.

In the benchmark process the simulator would share the GIL with the code being
measured, and its request handling would count as the ensemble's time. In a
child process (``python -m benchmarks.simulator``) it behaves like a very fast
remote provider on loopback. The parent sets behaviours over the child's stdin,
one JSON line per model; the child answers each line with ``ok``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from langchain_openai import ChatOpenAI

from langchain_moa.testing import ModelBehavior, OpenAISimulator

_STOP_TIMEOUT_S = 10.0
_ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    """Child process: serve, print the port, then apply behaviours read from stdin.

    Returns:
        The exit status (0 when stdin closes).
    """
    with OpenAISimulator(record_requests=False) as sim:
        _reply(sys.stdout, str(sim.port))
        for line in sys.stdin:
            command = json.loads(line)
            sim.set_behavior(command["model"], command["behavior"])
            _reply(sys.stdout, "ok")
    return 0


def _reply(stream: IO[str], text: str) -> None:
    stream.write(text + "\n")
    stream.flush()


class RemoteSimulator:
    """An ``OpenAISimulator`` served by a child process on a loopback port.

    Example:
        ```python
        with RemoteSimulator() as sim:
            sim.set_behavior("p0", ModelBehavior(first_token_latency=0.3))
            sim.chat_model("p0").invoke("Hi")
        ```
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self._client: OpenAISimulator | None = None

    def __enter__(self) -> RemoteSimulator:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.simulator"],
            cwd=_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        # Never started here: it only knows the port and builds ChatOpenAI models.
        self._client = OpenAISimulator(port=int(self._read_line()))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def port(self) -> int:
        """The simulator's TCP port on 127.0.0.1."""
        return self._started().port

    def set_behavior(self, model: str, behavior: ModelBehavior | None) -> None:
        """Set (or with ``None`` remove) the behaviour of one model name.

        Args:
            model: The model name.
            behavior: Its latency and fault knobs.
        """
        command = {"model": model, "behavior": behavior.to_dict() if behavior else None}
        process = self._running()
        assert process.stdin is not None
        process.stdin.write(json.dumps(command) + "\n")
        process.stdin.flush()
        self._read_line()

    def chat_model(self, model: str, **kwargs: Any) -> ChatOpenAI:
        """A ``ChatOpenAI`` for ``model`` served by the simulator.

        Args:
            model: The model name.
            **kwargs: Further ``ChatOpenAI`` arguments.

        Returns:
            The chat model (no retries, usage reported when streaming).
        """
        return self._started().chat_model(model, **kwargs)

    def _running(self) -> subprocess.Popen[str]:
        if self._process is None:
            msg = "the simulator is not started"
            raise RuntimeError(msg)
        return self._process

    def _read_line(self) -> str:
        stdout = self._running().stdout
        line = stdout.readline() if stdout is not None else ""
        if not line:
            msg = "the simulator process ended unexpectedly"
            raise RuntimeError(msg)
        return line.strip()

    def _started(self) -> OpenAISimulator:
        if self._client is None:
            msg = "the simulator is not started"
            raise RuntimeError(msg)
        return self._client


if __name__ == "__main__":
    raise SystemExit(main())
