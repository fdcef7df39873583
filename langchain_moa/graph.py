"""The LangGraph state machine that runs Mixture-of-Agents.

Shape: ``START -> layer_1 -> ... -> layer_{L-1} -> aggregate -> END``. Each
``layer_k`` is a subgraph ``start -> proposer_0 .. proposer_{n-1} -> finish`` whose
proposer nodes run in parallel (threads on the sync path, tasks on the async
path). Proposer failures are recorded, not raised; ``finish`` enforces the quorum.
The ``aggregate`` node appends the ensemble's answer: the aggregator's message
with the summed usage of every inner call and every proposal in its
``response_metadata``, the same message ``MoAChatModel`` returns, so the graph
used alone or as a subgraph gives the same result as the chat model.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import get_runtime
from typing_extensions import TypedDict

from langchain_moa._compat import RunnableCallable
from langchain_moa.aggregation import Aggregated, AggregationJob, AggregationStrategy
from langchain_moa.calls import BackgroundModels, InnerCall, inner_config
from langchain_moa.errors import ProposersFailedError, describe_error
from langchain_moa.events import (
    AnswerToken,
    LayerFinished,
    LayerStarted,
    ProposerFinished,
    event_to_dict,
)
from langchain_moa.inner_models import bind_tools, model_label, with_settings
from langchain_moa.prompts import ReferenceFormat, fit_references, inject_references
from langchain_moa.resilience import (
    LAYER_WATCHES,
    CallLimits,
    ConcurrencyLimit,
    ProposerTimeoutError,
    RetryPolicy,
    RunCancelledError,
)
from langchain_moa.state import MoAInput, MoAState, Proposal
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
    aggregation: AggregationStrategy | None = None

    @property
    def strategy(self) -> AggregationStrategy:
        """The aggregation strategy in force."""
        if self.aggregation is not None:
            return self.aggregation
        return Rank() if self.ranker_prompt is not None else Synthesize()

    def references(self, state: MoAState, layer: int) -> list[str]:
        """The successful answers of ``layer``, fitted to the budget."""
        texts = [p.text for p in state.get("proposals", []) if p.layer == layer and p.ok]
        return fit_references(texts, self.max_reference_chars)  # type: ignore[arg-type]

    def messages(self, state: MoAState, layer: int, prompt: str) -> list[BaseMessage]:
        """The conversation with ``layer``'s answers as references under ``prompt``."""
        references = self.references(state, layer)
        return inject_references(
            state["messages"], references, prompt, reference_format=self.reference_format
        )


class _LayerState(MoAState, total=False):
    layer_run: str


class _LayerOutput(TypedDict):
    proposals: list[Proposal]


_DEFAULT_OPTIONS = RunOptions()


def _options() -> RunOptions:
    context = get_runtime(RunOptions).context
    return context if isinstance(context, RunOptions) else _DEFAULT_OPTIONS


def _elapsed(started: float) -> float:
    return round(time.perf_counter() - started, 4)


def _write(event: Any) -> None:
    """Write a progress event (as a dict) to the graph's ``custom`` stream."""
    get_stream_writer()(event_to_dict(event))


@dataclass
class _Proposer:
    """A proposer node: one model answering with the previous layer's references."""

    layer: int
    index: int
    model: Runnable
    label: str
    settings: EngineSettings
    background: BackgroundModels

    def _build(self, model: Runnable) -> Runnable:
        """The model, with the caller's tools visible but not callable."""
        options = _options()
        if options.tools:
            # A model without tool support answers from the conversation alone.
            with suppress(NotImplementedError):
                model = bind_tools(model, list(options.tools), tool_choice="none")
        kwargs = self.settings.call_kwargs
        return model.bind(**kwargs) if kwargs else model

    def _call(self, state: _LayerState, config: RunnableConfig) -> InnerCall:
        options = _options()
        messages = self.settings.messages(state, self.layer - 1, self.settings.prompt)
        metadata = {"moa_layer": self.layer, "moa_proposer": self.index, "moa_model": self.label}
        name = f"layer {self.layer} · proposer {self.index} · {self.label}"
        limits = CallLimits(
            retry=self.settings.retry,
            timeout=self.settings.proposer_timeout,
            timeout_error=ProposerTimeoutError,
            watch=LAYER_WATCHES.get(state.get("layer_run")),
            limit=self.settings.limit,
            cancelled=options.cancelled,
        )
        inner = inner_config(config, name, metadata, options.proposer_tags)
        return InnerCall(self._build, self.model, messages, inner, limits)

    def _record(
        self, call: InnerCall, message: Any = None, error: BaseException | None = None
    ) -> dict:
        if isinstance(error, RunCancelledError):
            raise error
        text = usage = None
        if isinstance(message, AIMessage):
            text, usage = _proposal_text(message), message.usage_metadata
            if call.limits.watch is not None:
                call.limits.watch.count_success()
        proposal = Proposal(
            layer=self.layer,
            index=self.index,
            model=self.label,
            text=text,
            usage=usage,
            latency_s=_elapsed(call.started),
            error=describe_error(error) if error is not None else None,
            attempts=max(call.limits.attempts, 1),
        )
        _write(ProposerFinished(proposal))
        return {"proposals": [proposal]}

    def invoke(self, state: _LayerState, config: RunnableConfig) -> dict:
        call = self._call(state, config)
        try:
            answer = call.run_sync(self.background.for_model(self.model))
        except Exception as error:
            return self._record(call, error=error)
        return self._record(call, answer)

    async def ainvoke(self, state: _LayerState, config: RunnableConfig) -> dict:
        call = self._call(state, config)
        try:
            answer = await call.run_async()
        except Exception as error:
            return self._record(call, error=error)
        return self._record(call, answer)

    async def astreamed(
        self,
        state: _LayerState,
        config: RunnableConfig,
        on_chunk: Callable[[AIMessageChunk], None] | None,
        model: Runnable | None = None,
    ) -> Proposal:
        """Answer as ``ainvoke`` does, streamed to ``on_chunk``; return the record.

        Args:
            state: The state the proposer reads (with its layer's ``layer_run``).
            config: The node's config.
            on_chunk: Gets every chunk as it arrives (``None``: not streamed).
            model: The model to call instead of the proposer's own (its copy
                for the background loop).
        """
        call = self._call(state, config)
        if on_chunk is not None:
            call.writer = lambda token: on_chunk(token.chunk)
        if model is not None:
            call.model = model
        try:
            answer = await call.run_async()
        except Exception as error:
            return self._record(call, error=error)["proposals"][0]
        return self._record(call, answer)["proposals"][0]


@dataclass
class _NodeLayer:
    """The last proposer layer, run by the aggregation strategy inside the ``aggregate`` node.

    It is the strategy's ``job.layer`` (``aggregation.ProposerLayer``).
    """

    number: int
    proposers: list[_Proposer]
    settings: EngineSettings
    state: MoAState
    config: RunnableConfig
    job: AggregationJob
    layer_run: str | None = None

    @property
    def labels(self) -> list[str]:
        """The proposers' names, in order."""
        return [p.label for p in self.proposers]

    def open(self) -> None:
        """Start the layer: ``layer_started`` and its deadline watch."""
        update = _open_layer(self.number, self.labels, self.settings, self.state)
        self.layer_run = update.get("layer_run")
        self.state = {**self.state, **update}  # type: ignore[typeddict-item]

    async def run(
        self, index: int, on_chunk: Callable[[AIMessageChunk], None] | None = None
    ) -> Proposal:
        """Run proposer ``index`` (streamed to ``on_chunk`` if given); return its record."""
        proposer = self.proposers[index]
        copy = None
        if self.job.on_background:
            copy = proposer.background.for_model(proposer.model)
        return await proposer.astreamed(self.state, self.config, on_chunk, copy)  # type: ignore[arg-type]

    def close(self, proposals: Sequence[Proposal]) -> None:
        """End the layer: ``layer_finished`` and the quorum."""
        _close_layer(self.number, self.settings, self.layer_run, proposals)


@dataclass
class _Aggregator:
    """The aggregate node: the ensemble's aggregation strategy writes the answer.

    The strategy (``langchain_moa.aggregation``) decides which references the
    aggregator reads and how the answer is written; its job makes the calls,
    with the fallback aggregator answering for one that fails (a streamed call
    is retried or handed over only before its first token reached the caller).
    This node records the result: the aggregator's record and the ensemble's
    answer. With ``layer_models``, the strategy also runs the last proposer
    layer (the graph leaves that layer out).
    """

    last_layer: int
    model: Runnable
    settings: EngineSettings
    background: BackgroundModels
    layer_models: Sequence[Runnable] = ()

    def __post_init__(self) -> None:
        self._proposers = [
            _Proposer(self.last_layer, i, m, model_label(m), self.settings, self.background)
            for i, m in enumerate(self.layer_models)
        ]

    def _job(self, state: MoAState, config: RunnableConfig) -> AggregationJob:
        job = AggregationJob(
            state=state,
            config=config,
            options=_options(),
            settings=self.settings,
            last_layer=self.last_layer,
            aggregator=self.model,
            background=self.background,
        )
        if self._proposers:
            layer = _NodeLayer(self.last_layer, self._proposers, self.settings, state, config, job)
            job.layer = layer
        return job

    def _outcome(self, job: AggregationJob, done: Aggregated) -> dict:
        answer = done.answer
        if job.options.stream_answer and not done.streamed:
            get_stream_writer()(AnswerToken(AIMessageChunk(content=answer.content)))
        notes = [f"{label}: {describe_error(error)}" for label, error in job.failures]
        record = Proposal(
            layer=self.last_layer + 1,
            index=0,
            model=model_label(done.model),
            text=answer.text,
            usage=answer.usage_metadata if isinstance(answer, AIMessage) else None,
            latency_s=_elapsed(done.started),
            attempts=done.attempts,
            fallback_from="; ".join(notes) or None,
        )
        proposals = job.state.get("proposals", [])
        final = ensemble_answer(answer, proposals, record, self.settings)
        update: dict[str, Any] = {"messages": [final], "aggregation": record}
        if job.new_proposals:
            update["proposals"] = job.new_proposals
        return update

    def invoke(self, state: MoAState, config: RunnableConfig) -> dict:
        job = self._job(state, config)
        return self._outcome(job, self.settings.strategy.aggregate(job))

    async def ainvoke(self, state: MoAState, config: RunnableConfig) -> dict:
        job = self._job(state, config)
        return self._outcome(job, await self.settings.strategy.aaggregate(job))


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


def _proposal_text(message: AIMessage) -> str:
    """A proposal's text; tool calls a proposer made anyway are written out."""
    calls = [
        f"Proposed tool call: {c['name']}({json.dumps(c['args'])})" for c in message.tool_calls
    ]
    return "\n".join([message.text, *calls]).strip() if calls else message.text


def _node(func: Any, afunc: Any, name: str) -> Runnable:
    """A graph node with native sync and async bodies and no traced run of its own.

    This is how LangGraph itself wraps function nodes (its node already has a
    run); a ``RunnableLambda`` would add a second, identically named run.
    """
    return RunnableCallable(func, afunc, name=name, trace=False)


def _open_layer(
    layer: int, labels: list[str], settings: EngineSettings, state: MoAState
) -> dict[str, Any]:
    """Start a layer: its deadline watch (the update naming it) and ``layer_started``."""
    update: dict[str, Any] = {}
    if settings.layer_deadline is not None:
        update["layer_run"] = uuid.uuid4().hex
        LAYER_WATCHES.open(update["layer_run"], settings.layer_deadline, settings.min_proposers)
    references = len(settings.references(state, layer - 1))
    _write(LayerStarted(layer, labels, references))
    return update


def _close_layer(
    layer: int, settings: EngineSettings, layer_run: str | None, mine: Sequence[Proposal]
) -> None:
    """End a layer: ``layer_finished``, then the quorum.

    Raises:
        ProposersFailedError: Fewer than ``min_proposers`` answered.
    """
    LAYER_WATCHES.close(layer_run)
    succeeded = sum(p.ok for p in mine)
    _write(LayerFinished(layer, succeeded, len(mine) - succeeded))
    if succeeded < settings.min_proposers:
        raise ProposersFailedError(layer, settings.min_proposers, list(mine))


def _build_layer(
    layer: int,
    proposers: Sequence[Runnable],
    settings: EngineSettings,
    background: BackgroundModels,
) -> CompiledStateGraph:
    labels = [model_label(model) for model in proposers]

    def start(state: _LayerState) -> dict:
        return _open_layer(layer, labels, settings, state)

    def finish(state: _LayerState) -> dict:
        mine = [p for p in state.get("proposals", []) if p.layer == layer]
        _close_layer(layer, settings, state.get("layer_run"), mine)
        return {}

    builder = StateGraph(_LayerState, context_schema=RunOptions, output_schema=_LayerOutput)
    builder.add_node("start", start)
    builder.add_edge(START, "start")
    names = []
    for index, (model, label) in enumerate(zip(proposers, labels, strict=True)):
        node = _Proposer(layer, index, model, label, settings, background)
        name = f"proposer_{index}"
        builder.add_node(name, _node(node.invoke, node.ainvoke, name))
        builder.add_edge("start", name)
        names.append(name)
    builder.add_node("finish", finish)
    builder.add_edge(names, "finish")
    builder.add_edge("finish", END)
    return builder.compile(name=f"layer_{layer}")


def _sampled(proposers: Sequence[Runnable]) -> list[Runnable]:
    """The layer's proposers; a model's repeats skip the LLM cache (Self-MoA samples)."""
    seen: set[int] = set()
    models = []
    for model in proposers:
        models.append(with_settings(model, cache=False) if id(model) in seen else model)
        seen.add(id(model))
    return models


def build_moa_graph(
    proposer_layers: Sequence[Sequence[Runnable]],
    aggregator: Runnable,
    settings: EngineSettings,
) -> CompiledStateGraph:
    """Compile the Mixture-of-Agents graph.

    Args:
        proposer_layers: One list of proposer models per proposer layer.
        aggregator: The final aggregator model.
        settings: How inner models are called.

    Returns:
        A compiled graph. Input ``{"messages": [...]}``; output ``{"messages":
        [..., answer], "proposals": [Proposal, ...], "aggregation": Proposal}``.
        Per-call options go in ``context=RunOptions(...)``.
    """
    background = BackgroundModels()
    # Streamed answers report usage only if asked to (langchain_openai with a
    # custom base URL does not ask by default).
    aggregator = with_settings(aggregator, stream_usage=True)
    if settings.fallback_aggregator is not None:
        fallback = with_settings(settings.fallback_aggregator, stream_usage=True)
        settings = replace(settings, fallback_aggregator=fallback)
    builder = StateGraph(MoAState, context_schema=RunOptions, input_schema=MoAInput)
    in_graph, in_node = list(proposer_layers), []
    if settings.strategy.runs_last_layer:
        # The strategy runs the last layer itself, streamed: its usage must be reported.
        in_node = [with_settings(m, stream_usage=True) for m in _sampled(in_graph.pop())]
    previous = START
    for layer, models in enumerate(in_graph, 1):
        name = f"layer_{layer}"
        subgraph = _build_layer(layer, _sampled(models), settings, background)
        builder.add_node(name, subgraph)
        builder.add_edge(previous, name)
        previous = name
    node = _Aggregator(len(proposer_layers), aggregator, settings, background, in_node)
    builder.add_node("aggregate", _node(node.invoke, node.ainvoke, "aggregate"))
    builder.add_edge(previous, "aggregate")
    builder.add_edge("aggregate", END)
    return builder.compile(name="mixture_of_agents")
