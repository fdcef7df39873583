"""1. Critical-path efficiency: wall time ÷ (layers x latency), sync and async.

Every model answers after the same fixed latency, so an ensemble whose
proposers really run in parallel needs ``layers x latency``. The baseline makes
the same calls one after another, as the paper's reference scripts do.
"""

from __future__ import annotations

import asyncio

from benchmarks.common import (
    QUESTION,
    Figure,
    Lineup,
    Section,
    Simulator,
    Target,
    atimed,
    median,
    rounded,
    sequential_invoke,
    timed,
    uniform_lineup,
)
from benchmarks.sizes import Sizes
from langchain_moa import MoAChatModel

TARGET = Target(1.10)
_CONFIGS = (("moa_lite", "MoA-Lite", 2), ("moa", "MoA", 3))


def _sync_samples(llm: MoAChatModel, repeats: int) -> list[float]:
    llm.invoke(QUESTION)  # warm-up
    return [timed(lambda: llm.invoke(QUESTION)) for _ in range(repeats)]


async def _async_samples(llm: MoAChatModel, repeats: int) -> list[float]:
    await llm.ainvoke(QUESTION)  # warm-up
    return [await atimed(lambda: llm.ainvoke(QUESTION)) for _ in range(repeats)]


def _sequential_samples(team: Lineup, repeats: int) -> list[float]:
    return [timed(lambda: sequential_invoke(team)) for _ in range(repeats)]


def _measure(
    sim: Simulator, sizes: Sizes, key: str, name: str, layers: int
) -> tuple[list[Figure], dict[str, list[float]]]:
    team = uniform_lineup(sim, f"cp-{key}", layers, sizes.proposers, sizes.path_latency)
    llm = team.moa()
    ideal = layers * sizes.path_latency
    samples = {
        "invoke_s": _sync_samples(llm, sizes.repeats),
        "ainvoke_s": asyncio.run(_async_samples(llm, sizes.repeats)),
        "sequential_s": _sequential_samples(team, max(1, min(sizes.repeats, 3))),
    }
    sequential = median(samples["sequential_s"]) / ideal
    figures = [
        Figure(
            f"{key}_{path}",
            f"{path} wall / critical path, {name} ({layers} layers, {sizes.proposers} proposers)",
            median(samples[f"{path}_s"]) / ideal,
            compared_to="same calls one after another",
            baseline=sequential,
            target=TARGET,
        )
        for path in ("invoke", "ainvoke")
    ]
    return figures, {k: rounded(v) for k, v in samples.items()}


def run(sim: Simulator, sizes: Sizes) -> Section:
    """Measure wall time ÷ critical path for MoA-Lite and MoA, sync and async.

    Args:
        sim: The simulator.
        sizes: The run's sizes.

    Returns:
        The section, with raw wall times in its details.
    """
    figures: list[Figure] = []
    details: dict[str, object] = {}
    for key, name, layers in _CONFIGS:
        measured, samples = _measure(sim, sizes, key, name, layers)
        figures.extend(measured)
        details[key] = {"critical_path_s": layers * sizes.path_latency, **samples}
    params = {
        "proposers": sizes.proposers,
        "latency_s": sizes.path_latency,
        "repeats": sizes.repeats,
        "sequential_repeats": max(1, min(sizes.repeats, 3)),
    }
    return Section("critical_path", "1. Critical-path efficiency", params, figures, details)
