"""State of the Mixture-of-Agents graph and the record of one proposal."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any

from langchain_core.messages import AnyMessage
from langchain_core.messages.ai import UsageMetadata
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from langchain_moa.notes import merge_notes


@dataclass(frozen=True)
class Proposal:
    """One inner call's record: a proposer's answer (or failure), or the aggregator's call.

    The aggregator's record has the aggregator's layer (the last) and index 0.

    Attributes:
        layer: Proposer layer, counting from 1.
        index: Position of the proposer within its layer, counting from 0.
        model: Name of the model that answered.
        text: The answer's text, or ``None`` if the call failed.
        usage: Token usage reported by the model, if any.
        latency_s: Wall time of the call in seconds, retries included.
        error: ``"ErrorType: message"`` if the call failed, else ``None``.
        attempts: Calls made, retries of transient failures included.
        fallback_from: For the aggregator: ``"model: error"`` of the primary
            aggregator when the fallback aggregator answered instead.
        started_s: When the call started, in seconds from the run's start
            (``run_started``); ``None`` if the run's start is unknown.
        finished_s: When the call ended (answered or failed), in seconds from
            the run's start; ``None`` if the run's start is unknown.
        first_token_s: For a streamed aggregator: when its first token reached
            the caller, in seconds from the run's start; else ``None``.
    """

    layer: int
    index: int
    model: str
    text: str | None
    usage: UsageMetadata | None
    latency_s: float
    error: str | None = None
    attempts: int = 1
    fallback_from: str | None = None
    started_s: float | None = None
    finished_s: float | None = None
    first_token_s: float | None = None

    @property
    def ok(self) -> bool:
        """Whether the proposer produced an answer."""
        return self.error is None and self.text is not None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serializable dict (used in ``response_metadata``)."""
        return asdict(self)


def merge_proposals(left: list[Proposal], right: list[Proposal]) -> list[Proposal]:
    """Reducer: add proposals, replacing any with the same (layer, index).

    Keying by position makes the reducer idempotent, so a layer subgraph that
    returns every proposal it saw does not duplicate earlier layers.
    """
    merged = {(p.layer, p.index): p for p in left}
    merged.update({(p.layer, p.index): p for p in right})
    return sorted(merged.values(), key=lambda p: (p.layer, p.index))


class MoAState(TypedDict, total=False):
    """State of the Mixture-of-Agents graph.

    Input: ``messages`` (the conversation). Output: ``messages`` with the
    aggregator's answer appended (so the graph drops into a ``MessagesState``
    graph), ``proposals`` (every proposer's answer of every layer),
    ``aggregation`` (the aggregator's call: model, latency, usage) and
    ``run_started`` (when the first layer started, a ``time.time()`` value: the
    origin of every record's ``started_s``/``finished_s``). When a cost control
    acts (a budget, reference selection, early stop, the circuit breaker),
    ``controls`` records what it decided (see ``langchain_moa.notes``).
    """

    messages: Annotated[list[AnyMessage], add_messages]
    proposals: Annotated[list[Proposal], merge_proposals]
    aggregation: Proposal
    run_started: float
    controls: Annotated[dict[str, Any], merge_notes]


class MoAInput(TypedDict):
    """Input of the Mixture-of-Agents graph."""

    messages: list[AnyMessage]
