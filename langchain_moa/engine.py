"""What the Mixture-of-Agents graph's nodes share: settings, run options, records.

``RunOptions`` are a run's per-call options (the LangGraph runtime context),
``EngineSettings`` the ensemble's fixed settings; the helpers here time and
write records for the layer subgraphs (``layers``) and the aggregate node
(``aggregate_node``), and :func:`ensemble_answer` builds the answer they return.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.runnables import Runnable
from langgraph.config import get_stream_writer
from langgraph.runtime import get_runtime

from langchain_moa._compat import RunnableCallable
from langchain_moa.aggregation import AggregationStrategy
from langchain_moa.agreement import Agreement
from langchain_moa.events import event_to_dict
from langchain_moa.notes import reference_proposals
from langchain_moa.prompts import ReferenceFormat, fit_references, inject_references
from langchain_moa.resilience import ConcurrencyLimit, RetryPolicy
from langchain_moa.selection import SelectionStrategy
from langchain_moa.state import MoAState, Proposal
from langchain_moa.strategies import Rank, Synthesize
from langchain_moa.structured_output import StructuredRequest


@dataclass(frozen=True)
class RunOptions:
    """Per-call options of a graph run (LangGraph runtime context).

    Without them (the graph run directly or as a subgraph) the defaults apply:
    proposers are hidden from LangGraph's messages stream, the aggregator is not.

    Attributes:
        aggregator_kwargs: Extra call arguments for the aggregator (``stop``, ...).
        stream_answer: Stream the aggregator's tokens to the ``custom`` stream.
        proposer_tags: Tags added to every proposer run.
        aggregator_tags: Tags added to the aggregator's run.
        tools: Tools (OpenAI format) bound to the aggregator with ``tool_choice``
            and ``tool_kwargs``; proposers see them with ``tool_choice="none"``.
        tool_choice: The caller's tool choice, passed to the aggregator.
        tool_kwargs: Further ``bind_tools`` arguments (``parallel_tool_calls``...).
        structured: A schema the aggregator's answer must follow (``json_schema``
            or ``json_mode``); the aggregator then answers in one piece.
        cancelled: Set when the caller went away; inner calls then stop.
        max_cost_usd: The call's own budget in US dollars (else the ensemble's).
        max_total_tokens: The call's own budget in tokens (else the ensemble's).
    """

    aggregator_kwargs: dict[str, Any] = field(default_factory=dict)
    stream_answer: bool = False
    proposer_tags: tuple[str, ...] = ("nostream",)
    aggregator_tags: tuple[str, ...] = ()
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: Any = None
    tool_kwargs: dict[str, Any] = field(default_factory=dict)
    structured: StructuredRequest | None = None
    cancelled: threading.Event | None = None
    max_cost_usd: float | None = None
    max_total_tokens: int | None = None


@dataclass(frozen=True)
class EngineSettings:
    """How the graph calls its models (fixed per ensemble).

    Attributes:
        prompt: The aggregate-and-synthesize prompt.
        model_name: The ensemble's name, in the answer's metadata.
        call_kwargs: Generation arguments for every inner call.
        aggregator_call_kwargs: Default arguments of the aggregator alone (the
            ensemble's ``stop``); a run's own ``aggregator_kwargs`` override them.
        min_proposers: Successful answers each layer needs to go on.
        retry: Retry policy of every inner call.
        proposer_timeout: Seconds per proposer call, retries included.
        aggregator_timeout: Seconds for the aggregator, retries included.
        aggregator_first_token_timeout: Seconds until a streamed aggregator's
            first token.
        layer_deadline: Seconds after which, once ``min_proposers`` answered,
            a layer's stragglers are cancelled.
        max_reference_chars: Character budget of one agent's references.
        reference_format: How references are laid out (``"paper"``, ``"delimited"``).
        limit: Bound on in-flight inner calls.
        fallback_aggregator: Aggregates instead if the aggregator fails.
        ranker_prompt: The ranking prompt of ``aggregation="rank"``; without an
            ``aggregation``, setting it selects the ranker (as it always did).
        aggregation: How the aggregator writes the answer (see
            ``langchain_moa.aggregation``); ``None``: ``"rank"`` if
            ``ranker_prompt`` is set, else ``"synthesize"``.
        prices: The user's prices, USD per million tokens by model name.
        max_cost_usd: Budget of a call in US dollars (see ``budget``).
        max_total_tokens: Budget of a call in tokens.
        select_references: How many of a layer's answers go on (``None``: all).
        selection_strategy: ``"diverse"``, ``"judge"`` or ``"first"`` (see ``selection``).
        selection_embeddings: The embeddings of ``"diverse"``.
        selection_judge: The model of ``"judge"``.
        early_stop: Skip the remaining proposer layers once answers agree.
        circuit_breaker: Do not call again a proposer that failed permanently.
    """

    prompt: str
    model_name: str = "mixture-of-agents"
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    aggregator_call_kwargs: dict[str, Any] = field(default_factory=dict)
    min_proposers: int = 1
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_retries=0))
    proposer_timeout: float | None = None
    aggregator_timeout: float | None = None
    aggregator_first_token_timeout: float | None = None
    layer_deadline: float | None = None
    max_reference_chars: int | None = None
    reference_format: ReferenceFormat = "paper"
    limit: ConcurrencyLimit | None = None
    fallback_aggregator: Runnable | None = None
    ranker_prompt: str | None = None
    prices: dict[str, dict[str, float]] | None = None
    max_cost_usd: float | None = None
    max_total_tokens: int | None = None
    select_references: int | None = None
    selection_strategy: SelectionStrategy = "diverse"
    selection_embeddings: Any = None
    selection_judge: Runnable | None = None
    early_stop: Agreement | None = None
    circuit_breaker: bool = True
    aggregation: AggregationStrategy | None = None

    @property
    def strategy(self) -> AggregationStrategy:
        """The aggregation strategy in force."""
        if self.aggregation is not None:
            return self.aggregation
        return Rank() if self.ranker_prompt is not None else Synthesize()

    def check_strategy(self) -> None:
        """Refuse controls the strategy cannot apply yet.

        Raises:
            ValueError: A strategy that runs the last proposer layer itself
                (``"staircase"``) with ``select_references`` or ``early_stop``.
        """
        if self.strategy.runs_last_layer and (
            self.select_references is not None or self.early_stop is not None
        ):
            msg = (
                f"{self.strategy.name} cannot be combined with select_references/early_stop "
                "yet: it runs the last proposer layer inside the aggregation"
            )
            raise ValueError(msg)

    def references(self, state: MoAState, layer: int) -> list[str]:
        """The answers of ``layer`` that go on (see ``notes``), fitted to the budget."""
        texts = [p.text for p in reference_proposals(state, layer)]
        return fit_references(texts, self.max_reference_chars)  # type: ignore[arg-type]

    def messages(self, state: MoAState, layer: int, prompt: str) -> list[BaseMessage]:
        """The conversation with ``layer``'s answers as references under ``prompt``."""
        references = self.references(state, layer)
        return inject_references(
            state["messages"], references, prompt, reference_format=self.reference_format
        )


_DEFAULT_OPTIONS = RunOptions()


def current_options() -> RunOptions:
    """The running graph's options (the defaults when it runs without any)."""
    context = get_runtime(RunOptions).context
    return context if isinstance(context, RunOptions) else _DEFAULT_OPTIONS


def elapsed(started: float) -> float:
    """Seconds since ``started`` (``perf_counter``), rounded as records are."""
    return round(time.perf_counter() - started, 4)


def timing(state: MoAState, latency: float, first_token: float | None = None) -> dict[str, float]:
    """A record's ``started_s``/``finished_s``/``first_token_s``, from the run's start.

    Args:
        state: The graph's state; its ``run_started`` is the origin.
        latency: The call's duration (its ``latency_s``), measured just now.
        first_token: When the first streamed token went out (``time.time()``).

    Returns:
        The offsets in seconds, or nothing if the run's start is unknown.
    """
    origin = state.get("run_started")
    if origin is None:
        return {}
    finished = time.time() - origin
    started = round(max(finished - latency, 0.0), 4)
    offsets = {"started_s": started, "finished_s": round(finished, 4)}
    if first_token is not None:
        offsets["first_token_s"] = round(min(max(first_token - origin, 0.0), finished), 4)
    return offsets


def write(event: Any) -> None:
    """Write a progress event (as a dict) to the graph's ``custom`` stream."""
    get_stream_writer()(event_to_dict(event))


def proposal_text(message: AIMessage) -> str:
    """A proposal's text; tool calls a proposer made anyway are written out."""
    calls = [
        f"Proposed tool call: {c['name']}({json.dumps(c['args'])})" for c in message.tool_calls
    ]
    return "\n".join([message.text, *calls]).strip() if calls else message.text


def node(func: Any, afunc: Any, name: str) -> Runnable:
    """A graph node with native sync and async bodies and no traced run of its own.

    This is how LangGraph itself wraps function nodes (its node already has a
    run); a ``RunnableLambda`` would add a second, identically named run.
    """
    return RunnableCallable(func, afunc, name=name, trace=False)


def ensemble_answer(
    answer: BaseMessage,
    proposals: Sequence[Proposal],
    aggregation: Proposal,
    settings: EngineSettings,
) -> AIMessage:
    """The ensemble's answer: the aggregator's message, summed usage, every proposal.

    It keeps the aggregator's message id, so that a messages stream that showed
    the aggregator's tokens does not show the answer a second time.
    """
    failed = [p for p in proposals if not p.ok]
    layers = [[p.to_dict() for p in proposals if p.layer == n] for n in range(1, aggregation.layer)]
    metadata: dict[str, Any] = {
        "model_name": settings.model_name,
        "aggregator": aggregation.to_dict(),
        "proposals": layers,
        "failed_proposers": len(failed),
        "degraded": bool(failed) or aggregation.fallback_from is not None,
    }
    keys = ["finish_reason", "model_provider"]
    if settings.strategy.record_key is not None:
        keys.append(settings.strategy.record_key)
    for key in keys:
        if key in answer.response_metadata:
            metadata[key] = answer.response_metadata[key]
    extra: dict[str, Any] = {}
    if isinstance(answer, AIMessage):
        extra = {
            "tool_calls": answer.tool_calls,
            "invalid_tool_calls": answer.invalid_tool_calls,
            # "parsed" holds the aggregator's own parse (a Python object).
            "additional_kwargs": {
                k: v for k, v in answer.additional_kwargs.items() if k != "parsed"
            },
        }
    return AIMessage(
        content=answer.content,
        id=answer.id,
        usage_metadata=total_usage([*proposals, aggregation]),
        response_metadata=metadata,
        **extra,
    )


def total_usage(records: Sequence[Proposal]) -> UsageMetadata | None:
    """The summed usage of ``records`` (``None`` if none reported any)."""
    total: UsageMetadata | None = None
    for record in records:
        if record.usage:
            total = record.usage if total is None else add_usage(total, record.usage)
    return total
