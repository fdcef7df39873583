"""8. Aggregation strategies: staircase streaming against synthesize, in the same run.

Six proposers answer ``strategies_answer_tokens`` tokens (400), one every
``strategies_token_delay`` (20 ms) after ``strategies_latency`` (300 ms); the
aggregator sends its first token after ``strategies_latency`` too, then one every
``strategies_token_delay``. For MoA-Lite (2 layers) and MoA (3 layers), each
strategy's ``astream`` is timed to its first token and to its end, and its total
tokens (the summed usage of every inner call) are counted. The simulator answers
with the question, so a long question makes long answers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks.common import Figure, Lineup, Section, Simulator, Target, lineup, median, rounded
from benchmarks.sizes import Sizes
from langchain_moa import MoAChatModel
from langchain_moa.testing import ModelBehavior

TARGET = Target(0.2)
_STRATEGIES = ("synthesize", "staircase")
_ROWS = (("moa_lite", "MoA-Lite", 2), ("moa", "MoA", 3))


def question(tokens: int) -> str:
    """A question whose simulated answer (``"{model} answers: {q}"``) has ``tokens`` tokens."""
    words = ["Why", "is", "the", "sky", "blue?"]
    words += [f"detail{i}" for i in range(max(0, tokens - 2 - len(words)))]
    return " ".join(words)


async def _measure(llm: MoAChatModel, text: str) -> dict[str, float]:
    """Time to first token, total time and total tokens of one ``astream``."""
    started, first, total = time.perf_counter(), None, None
    async for chunk in llm.astream(text):
        if first is None and chunk.content:
            first = time.perf_counter() - started
        total = chunk if total is None else total + chunk
    elapsed = time.perf_counter() - started
    if first is None or total is None or total.usage_metadata is None:
        msg = "the stream ended without content or usage"
        raise RuntimeError(msg)
    aggregator = total.response_metadata["aggregator"]["usage"] or {}
    stairs = total.response_metadata.get("staircase", {}).get("stairs", [])
    return {
        "ttft_s": first,
        "total_s": elapsed,
        "tokens": total.usage_metadata["total_tokens"],
        "aggregator_input_tokens": aggregator.get("input_tokens", 0),
        "aggregator_output_tokens": aggregator.get("output_tokens", 0),
        "aggregator_calls": max(1, len(stairs)),
    }


def _team(sim: Simulator, sizes: Sizes, key: str, layers: int) -> Lineup:
    behavior = ModelBehavior(
        first_token_latency=sizes.strategies_latency, token_delay=sizes.strategies_token_delay
    )
    return lineup(sim, f"strat-{key}", layers, [behavior] * sizes.proposers, behavior)


async def _samples(
    ensembles: dict[str, MoAChatModel], text: str, repeats: int
) -> dict[str, list[dict[str, float]]]:
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in ensembles}
    for _ in range(repeats):
        for name, llm in ensembles.items():  # alternating, one request at a time
            samples[name].append(await _measure(llm, text))
    return samples


def _figures(
    key: str, name: str, layers: int, medians: dict[str, dict[str, float]]
) -> list[Figure]:
    stair, synth = medians["staircase"], medians["synthesize"]
    where = f"{name} ({layers} layers)"
    return [
        Figure(
            f"{key}_ttft_ratio",
            f"staircase time to first token / synthesize's, {where}",
            stair["ttft_s"] / synth["ttft_s"],
            target=TARGET if layers == 2 else None,
        ),
        Figure(
            f"{key}_ttft_s",
            f"time to first token, staircase, {where}",
            stair["ttft_s"],
            unit="s",
            compared_to="synthesize",
            baseline=synth["ttft_s"],
        ),
        Figure(
            f"{key}_total_s",
            f"total time, staircase, {where}",
            stair["total_s"],
            unit="s",
            compared_to="synthesize",
            baseline=synth["total_s"],
        ),
        Figure(
            f"{key}_tokens",
            f"total tokens (every inner call), staircase, {where}",
            stair["tokens"],
            unit="tokens",
            compared_to="synthesize",
            baseline=synth["tokens"],
        ),
        Figure(
            f"{key}_tokens_ratio",
            f"total tokens, staircase / synthesize, {where}",
            stair["tokens"] / synth["tokens"],
        ),
    ]


def run(sim: Simulator, sizes: Sizes) -> Section:
    """Measure staircase against synthesize for MoA-Lite and MoA.

    Args:
        sim: The simulator.
        sizes: The run's sizes.

    Returns:
        The section, with every sample and the staircase's stairs in its details.
    """
    text = question(sizes.strategies_answer_tokens)
    figures: list[Figure] = []
    details: dict[str, Any] = {}
    for key, name, layers in _ROWS:
        team = _team(sim, sizes, key, layers)
        ensembles = {strategy: team.moa(aggregation=strategy) for strategy in _STRATEGIES}
        repeats = sizes.strategies_repeats if layers == 2 else 1
        samples = asyncio.run(_samples(ensembles, text, repeats))
        medians = {
            strategy: {k: median([s[k] for s in runs]) for k in runs[0]}
            for strategy, runs in samples.items()
        }
        figures.extend(_figures(key, name, layers, medians))
        details[key] = {
            strategy: {k: rounded([s[k] for s in runs]) for k in runs[0]}
            for strategy, runs in samples.items()
        }
    params = {
        "proposers": sizes.proposers,
        "answer_tokens": sizes.strategies_answer_tokens,
        "latency_s": sizes.strategies_latency,
        "token_delay_s": sizes.strategies_token_delay,
        "staircase": "Staircase() defaults: chunk_tokens=32, stair_tokens=48",
        "repeats": {"moa_lite": sizes.strategies_repeats, "moa": 1},
        "path": "astream",
    }
    return Section("strategies", "8. Aggregation strategies", params, figures, details)
