"""Progress events emitted while a Mixture-of-Agents run is under way.

The graph writes them, as dicts (``event_to_dict``), to LangGraph's ``custom``
stream; ``MoAChatModel`` re-emits them as LangChain custom callback events named
``moa_progress`` and to the ``custom`` stream of a LangGraph node it runs in (see
the README, "Callbacks, tracing and progress").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from langchain_core.messages import AIMessageChunk

from langchain_moa.state import Proposal


@dataclass(frozen=True)
class LayerStarted:
    """A proposer layer started; ``models`` are its proposers in order."""

    layer: int
    models: list[str]
    references: int
    kind: str = field(default="layer_started", init=False)


@dataclass(frozen=True)
class ProposerFinished:
    """One proposer of a layer answered or failed."""

    proposal: Proposal
    kind: str = field(default="proposer_finished", init=False)


@dataclass(frozen=True)
class LayerFinished:
    """A proposer layer finished with ``succeeded`` answers and ``failed`` errors."""

    layer: int
    succeeded: int
    failed: int
    kind: str = field(default="layer_finished", init=False)


@dataclass(frozen=True)
class AggregationStarted:
    """The aggregator started reading ``references`` answers."""

    model: str
    references: int
    kind: str = field(default="aggregation_started", init=False)


ProgressEvent = LayerStarted | ProposerFinished | LayerFinished | AggregationStarted
"""Any progress event."""


@dataclass(frozen=True)
class AnswerToken:
    """A chunk of the aggregator's streamed answer (internal to streaming)."""

    chunk: AIMessageChunk


def event_to_dict(event: ProgressEvent) -> dict[str, Any]:
    """Return a JSON-serializable dict of ``event`` (for callbacks and UIs)."""
    return asdict(event)
