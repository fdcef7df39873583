"""What every benchmark shares: results, statistics, line-ups and direct baselines."""

from __future__ import annotations

import asyncio
import itertools
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage

from langchain_moa import DEFAULT_AGGREGATOR_PROMPT, MoAChatModel
from langchain_moa.prompts import inject_references
from langchain_moa.testing import ModelBehavior

QUESTION = "Why is the sky blue?"


class Simulator(Protocol):
    """What the benchmarks need of a simulator (``RemoteSimulator``)."""

    @property
    def port(self) -> int:
        """The simulator's TCP port on loopback."""

    def set_behavior(self, model: str, behavior: ModelBehavior | None) -> None:
        """Set the behaviour of one model name."""

    def chat_model(self, model: str, **kwargs: Any) -> BaseChatModel:
        """A chat model for one model name."""


# -- results -----------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A bound that a figure should meet.

    Attributes:
        limit: The bound.
        at_most: ``True``: the figure must be at most ``limit``; else at least.
    """

    limit: float
    at_most: bool = True

    def met(self, value: float) -> bool:
        """Whether ``value`` meets the bound."""
        return value <= self.limit if self.at_most else value >= self.limit

    def __str__(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.limit:g}"


@dataclass(frozen=True)
class Figure:
    """One measured figure, with what it is compared to in the same run.

    Attributes:
        key: Its name in the JSON results.
        label: What it is, for the table.
        value: The measured figure.
        unit: ``"x"`` (a ratio), ``"ms"``, ``"s"``, ``"q/s"`` or ``"MiB"``.
        compared_to: What the baseline is.
        baseline: The baseline, measured in the same run (same unit).
        target: The bound the issue asks for, if any.
    """

    key: str
    label: str
    value: float
    unit: str = "x"
    compared_to: str = ""
    baseline: float | None = None
    target: Target | None = None

    @property
    def met(self) -> bool | None:
        """Whether the target is met (``None``: no target)."""
        return None if self.target is None else self.target.met(self.value)

    def to_dict(self) -> dict[str, Any]:
        """The figure as JSON-ready values."""
        return {
            "label": self.label,
            "value": self.value,
            "unit": self.unit,
            "compared_to": self.compared_to,
            "baseline": self.baseline,
            "target": str(self.target) if self.target else None,
            "met": self.met,
        }


@dataclass
class Section:
    """The result of one benchmark.

    Attributes:
        key: Its name in the JSON results.
        title: Its title in the table.
        params: The parameters it ran with.
        figures: The figures it measured.
        details: Raw medians and samples behind the figures.
        seconds: How long it took.
    """

    key: str
    title: str
    params: dict[str, Any]
    figures: list[Figure]
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The section as JSON-ready values."""
        return {
            "title": self.title,
            "params": self.params,
            "figures": {f.key: f.to_dict() for f in self.figures},
            "details": self.details,
            "seconds": round(self.seconds, 2),
        }


# -- statistics and timing -----------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def rounded(values: Sequence[float], digits: int = 4) -> list[float]:
    """``values`` rounded for the JSON details."""
    return [round(v, digits) for v in values]


def timed(call: Callable[[], object]) -> float:
    """Seconds that ``call()`` takes."""
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


async def atimed(call: Callable[[], Awaitable[object]]) -> float:
    """Seconds that ``await call()`` takes."""
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


# -- line-ups --------------------------------------------------------------------


@dataclass
class Lineup:
    """Proposers and an aggregator served by the simulator, and their layers.

    Attributes:
        proposers: The proposer models (reused in every proposer layer).
        aggregator: The aggregator model.
        layers: All layers, the aggregator's included.
    """

    proposers: list[BaseChatModel]
    aggregator: BaseChatModel
    layers: int

    @property
    def inner_calls(self) -> int:
        """Inner model calls of one request."""
        return len(self.proposers) * (self.layers - 1) + 1

    def moa(self, **fields: Any) -> MoAChatModel:
        """The ensemble, with its graph compiled up front (outside any timing)."""
        llm = MoAChatModel(
            proposers=self.proposers, aggregator=self.aggregator, layers=self.layers, **fields
        )
        _ = llm.graph
        return llm


def lineup(
    sim: Simulator,
    prefix: str,
    layers: int,
    proposers: Sequence[ModelBehavior],
    aggregator: ModelBehavior,
) -> Lineup:
    """Set the behaviours of ``{prefix}-p{i}`` and ``{prefix}-agg`` and build their models.

    Args:
        sim: The simulator.
        prefix: A prefix unique to this line-up.
        layers: All layers, the aggregator's included.
        proposers: One behaviour per proposer.
        aggregator: The aggregator's behaviour.

    Returns:
        The line-up.
    """
    names = [f"{prefix}-p{i}" for i in range(len(proposers))]
    for name, behavior in zip(names, proposers, strict=True):
        sim.set_behavior(name, behavior)
    sim.set_behavior(f"{prefix}-agg", aggregator)
    models = [sim.chat_model(name) for name in names]
    return Lineup(models, sim.chat_model(f"{prefix}-agg"), layers)


def uniform_lineup(sim: Simulator, prefix: str, layers: int, count: int, latency: float) -> Lineup:
    """A line-up whose every model has the same first-token latency."""
    behavior = ModelBehavior(first_token_latency=latency)
    return lineup(sim, prefix, layers, [behavior] * count, behavior)


# -- direct baselines: the same HTTP calls without the ensemble ---------------------------


def _next_prompt(texts: Sequence[str], question: str = QUESTION) -> list[BaseMessage]:
    """The messages the ensemble would send, with ``texts`` as the references."""
    return inject_references([HumanMessage(question)], texts, DEFAULT_AGGREGATOR_PROMPT)


async def adirect_proposals(team: Lineup, question: str = QUESTION) -> list[BaseMessage]:
    """The proposer layers under ``asyncio.gather``; returns the aggregator's prompt."""
    texts: list[str] = []
    for _ in range(team.layers - 1):
        prompt = _next_prompt(texts, question)
        answers = await asyncio.gather(*(p.ainvoke(prompt) for p in team.proposers))
        texts = [a.text for a in answers]
    return _next_prompt(texts, question)


def _invoke(model: BaseChatModel, prompt: list[BaseMessage]) -> BaseMessage:
    return model.invoke(prompt)


def direct_proposals(
    team: Lineup, pool: ThreadPoolExecutor, question: str = QUESTION
) -> list[BaseMessage]:
    """The proposer layers on a thread pool; returns the aggregator's prompt."""
    texts: list[str] = []
    for _ in range(team.layers - 1):
        prompt = _next_prompt(texts, question)
        answers = pool.map(_invoke, team.proposers, itertools.repeat(prompt))
        texts = [a.text for a in answers]
    return _next_prompt(texts, question)


async def direct_ainvoke(team: Lineup, question: str = QUESTION) -> BaseMessage:
    """The ensemble's calls made with ``ChatOpenAI`` under ``asyncio.gather``, layer by layer."""
    return await team.aggregator.ainvoke(await adirect_proposals(team, question))


def direct_invoke(team: Lineup, pool: ThreadPoolExecutor, question: str = QUESTION) -> BaseMessage:
    """The ensemble's calls made with ``ChatOpenAI`` on a thread pool, layer by layer."""
    return team.aggregator.invoke(direct_proposals(team, pool, question))


def sequential_invoke(team: Lineup, question: str = QUESTION) -> BaseMessage:
    """The ensemble's calls made one after another, as the reference scripts do."""
    texts: list[str] = []
    for _ in range(team.layers - 1):
        prompt = _next_prompt(texts, question)
        texts = [p.invoke(prompt).text for p in team.proposers]
    return team.aggregator.invoke(_next_prompt(texts, question))
