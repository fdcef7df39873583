"""6. Memory: peak RSS of many concurrent ``ainvoke`` requests, per request.

Each measurement runs in a fresh interpreter (``python -m benchmarks.memory``)
so that earlier benchmarks do not pollute the peak. The child warms up with one
request, reads its RSS, then runs every request at once while a thread samples
``VmRSS``; the peak also comes from ``VmHWM`` (reset before the load). The
baseline child makes the same calls with plain ``ChatOpenAI``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    QUESTION,
    Figure,
    Lineup,
    Section,
    Simulator,
    direct_ainvoke,
    uniform_lineup,
)
from benchmarks.sizes import Sizes
from langchain_moa.testing import OpenAISimulator

_LAYERS = 2
_PREFIX = "mem"
_SAMPLE_S = 0.005
_CHILD_TIMEOUT_S = 600
_ROOT = Path(__file__).resolve().parents[1]
_STATUS = Path("/proc/self/status")


# -- child process -----------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (``None`` off Linux)."""
    try:
        lines = _STATUS.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None


def _reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux); whether it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class _Sampler:
    """Samples ``VmRSS`` on a thread and keeps the highest value."""

    def __init__(self) -> None:
        self.peak_kib = _status_kib("VmRSS") or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(_SAMPLE_S):
            self.peak_kib = max(self.peak_kib, _status_kib("VmRSS") or 0)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, _status_kib("VmRSS") or 0)


async def _measure(call: Callable[[str], Awaitable[Any]], requests: int) -> dict[str, Any]:
    """RSS before and at the peak of ``requests`` concurrent calls, in KiB."""
    await call(QUESTION)  # warm-up: imports, clients, compiled graph
    gc.collect()
    before = _status_kib("VmRSS") or 0
    reset = _reset_peak()
    with _Sampler() as sampler:
        await asyncio.gather(*(call(f"{QUESTION} ({i})") for i in range(requests)))
    high_water = _status_kib("VmHWM") if reset else None
    peak = max(sampler.peak_kib, high_water or 0)
    return {"before_kib": before, "peak_kib": peak, "sampled_peak_kib": sampler.peak_kib}


def _child_team(port: int, proposers: int) -> Lineup:
    sim = OpenAISimulator(port=port)  # never started: builds models for the port
    models = [sim.chat_model(f"{_PREFIX}-p{i}") for i in range(proposers)]
    return Lineup(models, sim.chat_model(f"{_PREFIX}-agg"), _LAYERS)


def _caller(mode: str, team: Lineup) -> Callable[[str], Awaitable[Any]]:
    if mode == "moa":
        return team.moa().ainvoke
    return lambda question: direct_ainvoke(team, question)


def main(argv: Sequence[str] | None = None) -> int:
    """Child process: measure one mode and write a JSON line to stdout.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("moa", "direct"), required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--proposers", type=int, required=True)
    args = parser.parse_args(argv)
    call = _caller(args.mode, _child_team(args.port, args.proposers))
    result = asyncio.run(_measure(call, args.requests))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


# -- parent --------------------------------------------------------------------------


def _child(mode: str, port: int, sizes: Sizes) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter and read its JSON line."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.memory",
        f"--port={port}",
        f"--mode={mode}",
        f"--requests={sizes.memory_requests}",
        f"--proposers={sizes.proposers}",
    ]
    done = subprocess.run(  # noqa: S603 - our own interpreter and module, fixed arguments
        command, cwd=_ROOT, capture_output=True, text=True, check=True, timeout=_CHILD_TIMEOUT_S
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _per_request_mib(result: dict[str, Any], requests: int) -> float:
    return (result["peak_kib"] - result["before_kib"]) / 1024 / requests


def run(sim: Simulator, sizes: Sizes) -> Section:
    """Measure peak RSS per concurrent request, ensemble and direct calls.

    Args:
        sim: The simulator.
        sizes: The run's sizes.

    Returns:
        The section, with RSS before and at the peak in its details.
    """
    team = uniform_lineup(sim, _PREFIX, _LAYERS, sizes.proposers, sizes.memory_latency)
    results = {mode: _child(mode, sim.port, sizes) for mode in ("moa", "direct")}
    requests = sizes.memory_requests
    figure = Figure(
        "ainvoke_mib_per_request",
        f"peak RSS growth per request, {requests} concurrent ainvoke",
        _per_request_mib(results["moa"], requests),
        unit="MiB",
        compared_to=f"direct ChatOpenAI, same {requests * team.inner_calls} calls at once",
        baseline=_per_request_mib(results["direct"], requests),
    )
    params = {
        "requests": requests,
        "proposers": sizes.proposers,
        "layers": _LAYERS,
        "inner_calls_per_request": team.inner_calls,
        "latency_s": sizes.memory_latency,
    }
    return Section("memory", "6. Memory", params, [figure], results)


if __name__ == "__main__":
    raise SystemExit(main())
