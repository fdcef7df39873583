"""5. Throughput: ``abatch`` of many questions with bounded concurrency.

With ``max_concurrency=C`` and every model answering after a fixed latency
``L``, at most ``C`` questions are in flight and each needs ``layers x L``, so
the ideal is ``C / (layers x L)`` questions per second. The baseline runs the
same calls with plain ``ChatOpenAI`` (``asyncio.gather`` per layer, at most
``C`` questions in flight).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks.common import (
    QUESTION,
    Figure,
    Lineup,
    Section,
    Simulator,
    Target,
    direct_ainvoke,
    median,
    rounded,
    uniform_lineup,
)
from benchmarks.sizes import Sizes
from langchain_moa import MoAChatModel

TARGET = Target(0.8, at_most=False)


def _questions(count: int) -> list[str]:
    return [f"{QUESTION} (question {i})" for i in range(count)]


async def _moa_rate(llm: MoAChatModel, questions: list[str], concurrency: int) -> float:
    """Questions per second of ``abatch`` with ``max_concurrency``."""
    started = time.perf_counter()
    await llm.abatch(questions, config={"max_concurrency": concurrency})
    return len(questions) / (time.perf_counter() - started)


async def _direct_rate(team: Lineup, questions: list[str], concurrency: int) -> float:
    """Questions per second of the direct calls, at most ``concurrency`` questions at once."""
    gate = asyncio.Semaphore(concurrency)

    async def one(question: str) -> None:
        async with gate:
            await direct_ainvoke(team, question)

    started = time.perf_counter()
    await asyncio.gather(*(one(q) for q in questions))
    return len(questions) / (time.perf_counter() - started)


async def _rates(llm: MoAChatModel, team: Lineup, sizes: Sizes) -> dict[str, list[float]]:
    questions, concurrency = _questions(sizes.throughput_questions), sizes.throughput_concurrency
    await llm.ainvoke(QUESTION)
    await direct_ainvoke(team)
    rates: dict[str, list[float]] = {"moa_qps": [], "direct_qps": []}
    for _ in range(sizes.throughput_repeats):
        rates["moa_qps"].append(await _moa_rate(llm, questions, concurrency))
        rates["direct_qps"].append(await _direct_rate(team, questions, concurrency))
    return rates


def _params(sizes: Sizes, team: Lineup) -> dict[str, Any]:
    return {
        "questions": sizes.throughput_questions,
        "max_concurrency": sizes.throughput_concurrency,
        "proposers": sizes.proposers,
        "layers": team.layers,
        "latency_s": sizes.throughput_latency,
        "inner_calls_per_question": team.inner_calls,
        "repeats": sizes.throughput_repeats,
    }


def run(sim: Simulator, sizes: Sizes) -> Section:
    """Measure ``abatch`` questions per second ÷ the ideal ``C / critical path``.

    Args:
        sim: The simulator.
        sizes: The run's sizes.

    Returns:
        The section, with the raw rates in its details.
    """
    layers = sizes.throughput_layers
    team = uniform_lineup(sim, "tput", layers, sizes.proposers, sizes.throughput_latency)
    llm = team.moa()
    ideal = sizes.throughput_concurrency / (layers * sizes.throughput_latency)
    rates = asyncio.run(_rates(llm, team, sizes))
    figures = [
        Figure(
            "abatch_ratio",
            f"abatch questions/s / ideal C / critical path ({ideal:.1f} q/s)",
            median(rates["moa_qps"]) / ideal,
            compared_to="direct ChatOpenAI, same calls and concurrency",
            baseline=median(rates["direct_qps"]) / ideal,
            target=TARGET,
        ),
        Figure(
            "abatch_qps",
            "abatch questions per second",
            median(rates["moa_qps"]),
            unit="q/s",
            compared_to="direct ChatOpenAI, same calls and concurrency",
            baseline=median(rates["direct_qps"]),
        ),
    ]
    details = {"ideal_qps": ideal, **{k: rounded(v, 3) for k, v in rates.items()}}
    return Section("throughput", "5. Throughput", _params(sizes, team), figures, details)
