"""3. Time to first token when streaming (``stream`` and ``astream``).

The first token of the answer cannot come before every proposer layer has
answered and the aggregator has produced its first token, so the ideal is
``(layers - 1) x proposer latency + aggregator first-token latency``. The
baseline makes the same calls with plain ``ChatOpenAI`` (parallel proposers,
then the aggregator's own stream).

It also records when every token arrived, for one model answering alone (the
aggregator's model, streaming the question) and for the ensemble
(``aggregation="synthesize"``), so that ``--plots`` can draw both over time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from langchain_core.messages import BaseMessageChunk

from benchmarks.common import (
    QUESTION,
    Figure,
    Lineup,
    Section,
    Simulator,
    Target,
    adirect_proposals,
    direct_proposals,
    lineup,
    median,
    rounded,
)
from benchmarks.sizes import Sizes
from langchain_moa import MoAChatModel
from langchain_moa.testing import ModelBehavior

TARGET = Target(1.2)
_LAYERS = 3


def _arrivals(chunks: Callable[[], Iterator[BaseMessageChunk]]) -> list[float]:
    """Seconds from the call to each chunk with content; the stream is read to its end."""
    started, arrivals = time.perf_counter(), []
    for chunk in chunks():
        if chunk.content:
            arrivals.append(time.perf_counter() - started)
    if not arrivals:
        msg = "the stream ended without content"
        raise RuntimeError(msg)
    return arrivals


def _first_token(chunks: Callable[[], Iterator[BaseMessageChunk]]) -> float:
    """Seconds until the first chunk with content; the stream is read to its end."""
    return _arrivals(chunks)[0]


async def _afirst_token(chunks: Callable[[], AsyncIterator[BaseMessageChunk]]) -> float:
    """Seconds until the first chunk with content; the stream is read to its end."""
    started, first = time.perf_counter(), None
    async for chunk in chunks():
        if first is None and chunk.content:
            first = time.perf_counter() - started
    if first is None:
        msg = "the stream ended without content"
        raise RuntimeError(msg)
    return first


def _sync_samples(
    llm: MoAChatModel, team: Lineup, repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[list[float]]]]:
    """Times to first token (``stream``, direct, one model) and every repeat's token arrivals."""
    with ThreadPoolExecutor(max_workers=len(team.proposers)) as pool:

        def direct() -> Iterator[BaseMessageChunk]:
            yield from team.aggregator.stream(direct_proposals(team, pool))

        _first_token(lambda: llm.stream(QUESTION))  # warm-up
        samples: dict[str, list[float]] = {
            "stream_s": [],
            "direct_stream_s": [],
            "one_model_stream_s": [],
        }
        arrivals: dict[str, list[list[float]]] = {"one_model": [], "synthesize": []}
        for _ in range(repeats):
            moa = _arrivals(lambda: llm.stream(QUESTION))
            samples["stream_s"].append(moa[0])
            samples["direct_stream_s"].append(_first_token(direct))
            alone = _arrivals(lambda: team.aggregator.stream(QUESTION))
            samples["one_model_stream_s"].append(alone[0])
            arrivals["synthesize"].append(rounded(moa))
            arrivals["one_model"].append(rounded(alone))
    return samples, arrivals


async def _async_samples(llm: MoAChatModel, team: Lineup, repeats: int) -> dict[str, list[float]]:
    async def direct() -> AsyncIterator[BaseMessageChunk]:
        async for chunk in team.aggregator.astream(await adirect_proposals(team)):
            yield chunk

    await _afirst_token(lambda: llm.astream(QUESTION))  # warm-up
    samples: dict[str, list[float]] = {"astream_s": [], "direct_astream_s": []}
    for _ in range(repeats):
        samples["astream_s"].append(await _afirst_token(lambda: llm.astream(QUESTION)))
        samples["direct_astream_s"].append(await _afirst_token(direct))
    return samples


def _team(sim: Simulator, sizes: Sizes) -> Lineup:
    proposer = ModelBehavior(first_token_latency=sizes.ttft_proposer_latency)
    aggregator = ModelBehavior(
        first_token_latency=sizes.ttft_aggregator_latency, token_delay=sizes.ttft_token_delay
    )
    return lineup(sim, "ttft", _LAYERS, [proposer] * sizes.proposers, aggregator)


def run(sim: Simulator, sizes: Sizes) -> Section:
    """Measure time to first token ÷ its ideal for ``stream`` and ``astream``.

    Args:
        sim: The simulator.
        sizes: The run's sizes.

    Returns:
        The section, with the raw times to first token and the token arrival
        times in its details.
    """
    team = _team(sim, sizes)
    llm = team.moa()
    ideal = (_LAYERS - 1) * sizes.ttft_proposer_latency + sizes.ttft_aggregator_latency
    samples, arrivals = _sync_samples(llm, team, sizes.repeats)
    samples.update(asyncio.run(_async_samples(llm, team, sizes.repeats)))
    figures = [
        Figure(
            f"{path}_ratio",
            f"{path}: time to first token / ideal ({_LAYERS} layers)",
            median(samples[f"{path}_s"]) / ideal,
            compared_to=f"direct ChatOpenAI: parallel proposers, aggregator.{path}",
            baseline=median(samples[f"direct_{path}_s"]) / ideal,
            target=TARGET,
        )
        for path in ("stream", "astream")
    ]
    details = {
        "ideal_s": ideal,
        **{k: rounded(v) for k, v in samples.items()},
        # Seconds from the call to each content chunk of every sync ``stream`` repeat:
        # the aggregator's model answering alone, and the ensemble.
        "token_arrivals_s": arrivals,
    }
    params = {
        "proposers": sizes.proposers,
        "layers": _LAYERS,
        "proposer_latency_s": sizes.ttft_proposer_latency,
        "aggregator_first_token_latency_s": sizes.ttft_aggregator_latency,
        "aggregator_token_delay_s": sizes.ttft_token_delay,
        "repeats": sizes.repeats,
    }
    return Section("ttft", "3. Time to first token", params, figures, details)
