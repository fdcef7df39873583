"""4. Tail latency with a straggler, with and without ``layer_deadline``.

Six proposers: five answer in 100-200 ms, one (the straggler) after a seeded
lognormal draw, sometimes several seconds. Every request gets its own draw
(the straggler of request ``k`` is the model ``tail-straggler-{k}``), and each
variant sees the same draws. To keep the run short, requests overlap: request
``k`` starts ``k x tail_interval`` seconds in.
"""

from __future__ import annotations

import asyncio
import gc
import math
from collections.abc import Awaitable
from statistics import NormalDist
from typing import Any, TypeVar

from langchain_core.messages import BaseMessage

from benchmarks.common import (
    QUESTION,
    Figure,
    Section,
    Simulator,
    atimed,
    lineup,
    median,
    percentile,
    rounded,
)
from benchmarks.sizes import Sizes
from langchain_moa import MoAChatModel
from langchain_moa.testing import ModelBehavior

_LAYERS = 2
T = TypeVar("T")


def straggler_draws(sizes: Sizes) -> list[float]:
    """The straggler's latency for every request: lognormal, seeded, capped."""
    normal = NormalDist(mu=math.log(sizes.tail_median), sigma=sizes.tail_sigma)
    draws = normal.samples(sizes.tail_runs, seed=sizes.tail_seed)
    return [min(sizes.tail_max, math.exp(z)) for z in draws]


def _fast_latencies(sizes: Sizes) -> list[float]:
    count = sizes.proposers - 1
    low, high = sizes.tail_fast
    step = (high - low) / max(1, count - 1)
    return [low + i * step for i in range(count)]


def _variants(sizes: Sizes) -> dict[str, dict[str, Any]]:
    return {
        "no_deadline": {},
        "layer_deadline": {
            "layer_deadline": sizes.layer_deadline,
            "min_proposers": sizes.min_proposers,
        },
        "proposer_timeout": {"proposer_timeout": sizes.proposer_timeout},
    }


def _ensembles(
    sim: Simulator, sizes: Sizes, draws: list[float], fields: dict[str, Any]
) -> tuple[MoAChatModel, list[MoAChatModel]]:
    """A warm-up ensemble, and one ensemble per request.

    Request ``k``'s ensemble has the fast proposers plus its own straggler. The
    warm-up's straggler is slow enough to be cut, so that the first cut's
    one-time costs (lazy imports, first cancellation) fall outside the timing.
    """
    fast = [ModelBehavior(first_token_latency=s) for s in _fast_latencies(sizes)]
    aggregator = ModelBehavior(first_token_latency=sizes.tail_aggregator_latency)
    team = lineup(sim, "tail", _LAYERS, fast, aggregator)
    fast_models = team.proposers
    slowest_cut = max(sizes.layer_deadline, sizes.proposer_timeout)
    ensembles = []
    for k, draw in [("warm-up", 1.2 * slowest_cut), *enumerate(draws)]:
        name = f"tail-straggler-{k}"
        sim.set_behavior(name, ModelBehavior(first_token_latency=draw))
        team.proposers = [*fast_models, sim.chat_model(name)]
        ensembles.append(team.moa(**fields))
    return ensembles[0], ensembles[1:]


async def _latencies(
    warm_up: MoAChatModel, ensembles: list[MoAChatModel], interval: float
) -> list[tuple[float, bool]]:
    """Each request's wall time and whether its answer was degraded.

    Request ``k`` starts ``k x interval`` seconds in (open-loop arrivals), so
    requests overlap without starting in lockstep.
    """

    async def one(k: int, llm: MoAChatModel) -> tuple[float, bool]:
        answers: list[BaseMessage] = []

        async def call() -> None:
            answers.append(await llm.ainvoke(QUESTION))

        await asyncio.sleep(k * interval)
        seconds = await atimed(call)
        return seconds, bool(answers[0].response_metadata.get("degraded"))

    await warm_up.ainvoke(QUESTION)
    return list(await asyncio.gather(*(one(k, llm) for k, llm in enumerate(ensembles))))


async def _frozen(measure: Awaitable[T]) -> T:
    """Await ``measure`` with the prebuilt ensembles out of the garbage collector's way.

    The ensembles of every request are built up front; without ``gc.freeze()``
    they make each full collection of the timed run take tens of milliseconds,
    a cost of this harness, not of serving requests.
    """
    gc.collect()
    gc.freeze()
    try:
        return await measure
    finally:
        gc.unfreeze()


def _summary(results: list[tuple[float, bool]]) -> dict[str, Any]:
    seconds = [s for s, _ in results]
    return {
        "p50_s": median(seconds),
        "p99_s": percentile(seconds, 99),
        "max_s": max(seconds),
        "degraded": sum(d for _, d in results),
        "latencies_s": rounded(seconds),
    }


def _figures(sizes: Sizes, summary: dict[str, dict[str, Any]]) -> list[Figure]:
    labels = {
        "layer_deadline": (
            f"layer_deadline={sizes.layer_deadline:g} s, min_proposers={sizes.min_proposers}"
        ),
        "proposer_timeout": f"proposer_timeout={sizes.proposer_timeout:g} s",
    }
    return [
        Figure(
            f"{stat}_{variant}_s",
            f"{stat} latency, {label}",
            summary[variant][f"{stat}_s"],
            unit="s",
            compared_to="no deadline (waits for the straggler)",
            baseline=summary["no_deadline"][f"{stat}_s"],
        )
        for variant, label in labels.items()
        for stat in ("p50", "p99")
    ]


def _params(sizes: Sizes) -> dict[str, Any]:
    return {
        "proposers": sizes.proposers,
        "layers": _LAYERS,
        "runs": sizes.tail_runs,
        "arrival_interval_s": sizes.tail_interval,
        "straggler": {
            "distribution": "lognormal",
            "median_s": sizes.tail_median,
            "sigma": sizes.tail_sigma,
            "cap_s": sizes.tail_max,
            "seed": sizes.tail_seed,
        },
        "other_proposers_s": rounded(_fast_latencies(sizes), 3),
        "aggregator_latency_s": sizes.tail_aggregator_latency,
        "variants": _variants(sizes),
    }


def run(sim: Simulator, sizes: Sizes) -> Section:
    """Measure p50 and p99 latency with a heavy-tailed straggler, per variant.

    Args:
        sim: The simulator.
        sizes: The run's sizes.

    Returns:
        The section, with every request's latency in its details.
    """
    draws = straggler_draws(sizes)
    summary = {}
    for variant, fields in _variants(sizes).items():
        warm_up, ensembles = _ensembles(sim, sizes, draws, fields)
        results = asyncio.run(_frozen(_latencies(warm_up, ensembles, sizes.tail_interval)))
        summary[variant] = _summary(results)
    details = {
        "straggler_draws_s": rounded(draws),
        "straggler_p50_s": median(draws),
        "straggler_p99_s": percentile(draws, 99),
        "no_straggler_critical_path_s": sizes.tail_fast[1] + sizes.tail_aggregator_latency,
        "deadline_bound_s": sizes.layer_deadline + sizes.tail_aggregator_latency,
        **summary,
    }
    return Section(
        "tail_latency", "4. Tail latency", _params(sizes), _figures(sizes, summary), details
    )
