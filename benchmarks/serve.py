"""7. Serving: ``moa serve`` under 100 concurrent requests from the ``openai`` client.

A MoA-Lite ensemble whose every model answers after a fixed latency runs
behind ``moa serve`` (1 and 2 uvicorn workers) and, in the same run, in this
process. Each batch sends every request at once: through
``openai.AsyncOpenAI`` to the server, or as ``ainvoke``/``astream`` calls in
process; batches of both kinds alternate. Figures: the server's throughput ÷
in-process throughput, the latency it adds (p50 and p99 of the server's
latencies minus the same percentile in process, under that load and for
requests sent one at a time), the server's CPU time per request (every server
process, from ``/proc``) and resident memory per worker.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai

from benchmarks.common import (
    QUESTION,
    Figure,
    Section,
    Simulator,
    Target,
    median,
    percentile,
    rounded,
    uniform_lineup,
)
from benchmarks.served import ServedProcess, cpu_seconds, rss_mib
from benchmarks.sizes import Sizes
from langchain_moa import MoAChatModel

_PREFIX = "serve"
_KEY = "benchmark-key"
_LAYERS = 2
RATIO_TARGET = Target(0.8, at_most=False)
ADDED_P50_TARGET = Target(15.0)

Call = Callable[[str], Awaitable[str]]


def _config(port: int, proposers: int) -> str:
    names = ", ".join(f'"{_PREFIX}-p{i}"' for i in range(proposers))
    return (
        f'[ensembles.bench]\nbase_url = "http://127.0.0.1:{port}/v1"\n'
        f'proposers = [{names}]\naggregator = "{_PREFIX}-agg"\nlayers = {_LAYERS}\n'
    )


def _server_calls(api: openai.AsyncOpenAI) -> dict[str, Call]:
    async def plain(question: str) -> str:
        answer = await api.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": question}]
        )
        return answer.choices[0].message.content or ""

    async def stream(question: str) -> str:
        chunks = await api.chat.completions.create(
            model="bench",
            messages=[{"role": "user", "content": question}],
            stream=True,
            stream_options={"include_usage": True},
        )
        return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])

    return {"plain": plain, "stream": stream}


def _local_calls(llm: MoAChatModel) -> dict[str, Call]:
    async def plain(question: str) -> str:
        return (await llm.ainvoke(question)).text

    async def stream(question: str) -> str:
        return "".join([chunk.text async for chunk in llm.astream(question)])

    return {"plain": plain, "stream": stream}


async def _batch(call: Call, requests: int) -> tuple[float, list[float]]:
    """Every request at once: (requests per second, each request's latency in s)."""

    async def one(i: int) -> float:
        started = time.perf_counter()
        answer = await call(f"{QUESTION} ({i})")
        if f"({i})" not in answer:
            msg = f"wrong answer to request {i}: {answer[:200]!r}"
            raise RuntimeError(msg)
        return time.perf_counter() - started

    started = time.perf_counter()
    latencies = await asyncio.gather(*(one(i) for i in range(requests)))
    return requests / (time.perf_counter() - started), list(latencies)


async def _one_at_a_time(call: Call, requests: int) -> list[float]:
    """Latencies of ``requests`` requests sent one after another (no load)."""
    latencies = []
    for i in range(requests):
        started = time.perf_counter()
        await call(f"{QUESTION} (alone {i})")
        latencies.append(time.perf_counter() - started)
    return latencies


async def _measure(
    server: ServedProcess, llm: MoAChatModel, sizes: Sizes, workers: int
) -> dict[str, Any]:
    requests = sizes.serve_requests
    own_cpu = lambda: cpu_seconds([os.getpid()])  # noqa: E731
    results: dict[str, Any] = {}
    async with openai.AsyncOpenAI(base_url=server.url, api_key=_KEY, max_retries=0) as api:
        remote, local = _server_calls(api), _local_calls(llm)
        for mode in ("plain", "stream"):  # warm-up: every worker, every code path
            await _batch(remote[mode], requests)
            await _batch(local[mode], min(requests, 10))
        for mode in ("plain", "stream"):
            rows: dict[str, list[Any]] = {k: [] for k in ("server", "local", "cpu", "local_cpu")}
            for _ in range(sizes.serve_repeats):
                before = cpu_seconds(server.pids)
                rows["server"].append(await _batch(remote[mode], requests))
                after = cpu_seconds(server.pids)
                if before is not None and after is not None:
                    rows["cpu"].append((after - before) / requests * 1000)
                before = own_cpu()
                rows["local"].append(await _batch(local[mode], requests))
                after = own_cpu()
                if before is not None and after is not None:
                    rows["local_cpu"].append((after - before) / requests * 1000)
            rows["alone"] = await _one_at_a_time(remote[mode], sizes.serve_sequential)
            rows["local_alone"] = await _one_at_a_time(local[mode], sizes.serve_sequential)
            results[mode] = rows
    rss = [rss_mib(pid) for pid in server.worker_pids(workers)]
    results["rss_mib"] = [r for r in rss if r is not None]
    return results


def _summary(rows: dict[str, list[Any]]) -> dict[str, float]:
    server = [lat for _, lats in rows["server"] for lat in lats]
    local = [lat for _, lats in rows["local"] for lat in lats]
    return {
        "ratio": median([r for r, _ in rows["server"]]) / median([r for r, _ in rows["local"]]),
        "server_rps": median([r for r, _ in rows["server"]]),
        "local_rps": median([r for r, _ in rows["local"]]),
        "server_p50_ms": percentile(server, 50) * 1000,
        "local_p50_ms": percentile(local, 50) * 1000,
        "server_p99_ms": percentile(server, 99) * 1000,
        "local_p99_ms": percentile(local, 99) * 1000,
        "alone_p50_ms": percentile(rows["alone"], 50) * 1000,
        "local_alone_p50_ms": percentile(rows["local_alone"], 50) * 1000,
        "cpu_ms": median(rows["cpu"]) if rows["cpu"] else float("nan"),
        "local_cpu_ms": median(rows["local_cpu"]) if rows["local_cpu"] else float("nan"),
    }


def _figures(workers: int, mode: str, s: dict[str, float], requests: int) -> list[Figure]:
    tag = f"w{workers}_{mode}"
    kind = "streaming" if mode == "stream" else "plain"
    what = f"{workers} worker{'s' if workers > 1 else ''}, {kind}"
    in_process = f"in-process {'astream' if mode == 'stream' else 'ainvoke'}, same requests"
    return [
        Figure(
            f"throughput_ratio_{tag}",
            f"{what}: requests/s ÷ in-process ({requests} concurrent)",
            s["ratio"],
            compared_to=in_process,
            baseline=1.0,
            target=RATIO_TARGET if workers == 2 else None,
        ),
        Figure(
            f"added_p50_ms_{tag}",
            f"{what}: added p50 latency, {requests} concurrent",
            s["server_p50_ms"] - s["local_p50_ms"],
            unit="ms",
            compared_to=f"{in_process}: p50",
            baseline=s["local_p50_ms"],
            target=ADDED_P50_TARGET,
        ),
        Figure(
            f"added_p50_ms_alone_{tag}",
            f"{what}: added p50 latency, one request at a time",
            s["alone_p50_ms"] - s["local_alone_p50_ms"],
            unit="ms",
            compared_to=f"{in_process}, one at a time: p50",
            baseline=s["local_alone_p50_ms"],
            target=ADDED_P50_TARGET,
        ),
        Figure(
            f"added_p99_ms_{tag}",
            f"{what}: added p99 latency, {requests} concurrent",
            s["server_p99_ms"] - s["local_p99_ms"],
            unit="ms",
            compared_to=f"{in_process}: p99",
            baseline=s["local_p99_ms"],
        ),
        Figure(
            f"cpu_ms_per_request_{tag}",
            f"{what}: server CPU per request",
            s["cpu_ms"],
            unit="ms",
            compared_to=f"{in_process}: this process's CPU",
            baseline=s["local_cpu_ms"],
        ),
    ]


def run(sim: Simulator, sizes: Sizes) -> Section:
    """Measure ``moa serve`` against the same requests made in process.

    Args:
        sim: The simulator.
        sizes: The run's sizes.

    Returns:
        The section, with every batch's rate and latency percentiles in its details.
    """
    team = uniform_lineup(sim, _PREFIX, _LAYERS, sizes.serve_proposers, sizes.serve_latency)
    llm = team.moa()
    figures: list[Figure] = []
    details: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "serve.toml"
        config.write_text(_config(sim.port, sizes.serve_proposers), encoding="utf-8")
        for workers in sizes.serve_workers:
            args = ["--config", str(config), "--workers", str(workers), "--log-level", "warning"]
            args += ["--max-concurrency-per-key", str(sizes.serve_requests * 2)]
            with ServedProcess(args, {"MOA_SERVER_API_KEYS": _KEY}) as server:
                results = asyncio.run(_measure(server, llm, sizes, workers))
            for mode in ("plain", "stream"):
                summary = _summary(results[mode])
                figures.extend(_figures(workers, mode, summary, sizes.serve_requests))
                details[f"w{workers}_{mode}"] = {k: round(v, 3) for k, v in summary.items()}
            rss = results["rss_mib"]
            details[f"w{workers}_rss_mib"] = rounded(rss, 1)
            if rss:
                figures.append(
                    Figure(
                        f"rss_mib_per_worker_w{workers}",
                        f"{workers} worker{'s' if workers > 1 else ''}: resident memory per worker",
                        sum(rss) / len(rss),
                        unit="MiB",
                    )
                )
    params = {
        "requests": sizes.serve_requests,
        "proposers": sizes.serve_proposers,
        "layers": _LAYERS,
        "latency_s": sizes.serve_latency,
        "workers": list(sizes.serve_workers),
        "repeats": sizes.serve_repeats,
        "inner_calls_per_request": team.inner_calls,
    }
    return Section("serve", "7. Serving (moa serve)", params, figures, details)
