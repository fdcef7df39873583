"""2. Framework overhead: orchestration time per inner call at zero simulated latency.

With models that answer at once, the ensemble's wall time is HTTP round trips
plus orchestration. The baseline makes the same HTTP calls, layer by layer,
with plain ``ChatOpenAI``: under ``asyncio.gather`` (async) or on a thread pool
(sync). The difference, divided by the number of inner calls, is the cost the
ensemble adds to each call.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from benchmarks.common import (
    QUESTION,
    Figure,
    Lineup,
    Section,
    Simulator,
    atimed,
    direct_ainvoke,
    direct_invoke,
    median,
    rounded,
    timed,
    uniform_lineup,
)
from benchmarks.sizes import Sizes
from langchain_moa import MoAChatModel

_LAYERS = 3


def _sync_samples(llm: MoAChatModel, team: Lineup, runs: int) -> tuple[list[float], list[float]]:
    """Interleaved wall times of the ensemble's ``invoke`` and of the direct calls."""
    with ThreadPoolExecutor(max_workers=len(team.proposers)) as pool:
        llm.invoke(QUESTION)
        direct_invoke(team, pool)
        moa, direct = [], []
        for _ in range(runs):
            moa.append(timed(lambda: llm.invoke(QUESTION)))
            direct.append(timed(lambda: direct_invoke(team, pool)))
    return moa, direct


async def _async_samples(
    llm: MoAChatModel, team: Lineup, runs: int
) -> tuple[list[float], list[float]]:
    """Interleaved wall times of the ensemble's ``ainvoke`` and of the direct calls."""
    await llm.ainvoke(QUESTION)
    await direct_ainvoke(team)
    moa, direct = [], []
    for _ in range(runs):
        moa.append(await atimed(lambda: llm.ainvoke(QUESTION)))
        direct.append(await atimed(lambda: direct_ainvoke(team)))
    return moa, direct


def _figure(path: str, moa: list[float], direct: list[float], calls: int) -> Figure:
    per_call_ms = 1000 / calls
    baseline = "asyncio.gather" if path == "ainvoke" else "a thread pool"
    return Figure(
        f"{path}_ms_per_call",
        f"{path}: orchestration per inner call ((MoA - direct) / {calls} calls)",
        (median(moa) - median(direct)) * per_call_ms,
        unit="ms",
        compared_to=f"wall per inner call, direct ChatOpenAI on {baseline}",
        baseline=median(direct) * per_call_ms,
    )


def run(sim: Simulator, sizes: Sizes) -> Section:
    """Measure the ensemble's orchestration time per inner call, sync and async.

    Args:
        sim: The simulator.
        sizes: The run's sizes.

    Returns:
        The section, with the raw wall times in its details.
    """
    team = uniform_lineup(sim, "overhead", _LAYERS, sizes.proposers, 0.0)
    llm = team.moa()
    runs = sizes.repeats * sizes.overhead_runs
    samples = {
        "invoke": _sync_samples(llm, team, runs),
        "ainvoke": asyncio.run(_async_samples(llm, team, runs)),
    }
    figures = [_figure(path, *pair, team.inner_calls) for path, pair in samples.items()]
    details = {
        f"{path}_{kind}_s": rounded(values, 5)
        for path, pair in samples.items()
        for kind, values in zip(("moa", "direct"), pair, strict=True)
    }
    params = {
        "proposers": sizes.proposers,
        "layers": _LAYERS,
        "inner_calls": team.inner_calls,
        "runs": runs,
        "latency_s": 0.0,
    }
    return Section("overhead", "2. Framework overhead", params, figures, details)
