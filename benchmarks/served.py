"""``moa serve`` in a child process: start it, read its URL, its CPU time and memory.

CPU time and resident memory come from ``/proc`` (Linux): the server's
process and every descendant (uvicorn's worker processes), so nothing extra
needs installing. Off Linux they read as ``None``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

import httpx

_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 20.0
_ROOT = Path(__file__).resolve().parents[1]
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from the state on


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """``pid``'s child processes, their children and so on."""
    result, pending = [], [pid]
    while pending:
        children = _children(pending.pop())
        result.extend(children)
        pending.extend(children)
    return result


def cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds of ``pids`` so far (``None`` off Linux)."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is None:
            return None
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def rss_mib(pid: int) -> float | None:
    """Resident memory of ``pid`` in MiB (``None`` off Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class ServedProcess:
    """``python -m langchain_moa serve --port 0 ...`` until the context ends.

    Args:
        args: Further ``moa serve`` arguments.
        env: Extra environment variables.
    """

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self._args = args
        self._env = env
        self._process: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> ServedProcess:
        self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "langchain_moa", "serve", "--port", "0", *self._args],
            cwd=_ROOT,
            env={**os.environ, **self._env},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.url = self._wait_for_url()
        return self

    def _wait_for_url(self) -> str:
        process = self._running()
        assert process.stdout is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        for line in process.stdout:
            if line.startswith("Serving at "):
                url = line.split()[2]
                threading.Thread(target=process.stdout.read, daemon=True).start()
                while time.monotonic() < deadline:
                    try:
                        if httpx.get(url.removesuffix("/v1") + "/health").status_code == 200:
                            return url
                    except httpx.HTTPError:
                        time.sleep(0.1)
                break
        msg = "moa serve did not start"
        raise RuntimeError(msg)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def _running(self) -> subprocess.Popen[str]:
        if self._process is None:
            msg = "moa serve is not running"
            raise RuntimeError(msg)
        return self._process

    @property
    def pids(self) -> list[int]:
        """The server's process and its descendants."""
        pid = self._running().pid
        return [pid, *descendants(pid)]

    def worker_pids(self, workers: int) -> list[int]:
        """The processes that serve requests: the server itself, or its uvicorn workers."""
        pid = self._running().pid
        if workers == 1:
            return [pid]
        return [p for p in _children(pid) if b"resource_tracker" not in _cmdline(p)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
