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
import re
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import merge_configs
from langgraph._internal._runnable import RunnableCallable
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import get_runtime
from typing_extensions import TypedDict

from langchain_moa.calls import BackgroundModels, InnerCall, StreamBrokenError
from langchain_moa.errors import AggregatorFailedError, ProposersFailedError, describe_error
from langchain_moa.events import (
    AggregationStarted,
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
    AggregatorTimeoutError,
    CallLimits,
    ConcurrencyLimit,
    ProposerTimeoutError,
    RetryPolicy,
    RunCancelledError,
)
from langchain_moa.state import MoAInput, MoAState, Proposal
from langchain_moa.structured_output import StructuredRequest, constrained_aggregator


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
        ranker_prompt: If set, the aggregator only picks the best proposal
            (the paper's LLM-ranker baseline) with this prompt.
    """

    prompt: str
    model_name: str = "mixture-of-agents"
    call_kwargs: dict[str, Any] = field(default_factory=dict)
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


def _inner_config(
    config: RunnableConfig, run_name: str, metadata: dict[str, Any], tags: tuple[str, ...]
) -> RunnableConfig:
    return merge_configs(
        config, {"run_name": run_name, "metadata": metadata, "tags": ["moa:inner", *tags]}
    )


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
        inner = _inner_config(config, name, metadata, options.proposer_tags)
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


@dataclass
class _Aggregator:
    """The aggregator node: synthesizes the last layer's answers into one.

    On failure (after retries and timeouts) the fallback aggregator, if any,
    answers instead; a streamed answer is retried or handed over only before
    its first token reached the caller.
    """

    last_layer: int
    model: Runnable
    settings: EngineSettings
    background: BackgroundModels

    def _builder(self, options: RunOptions) -> Any:
        def build(model: Runnable) -> Runnable:
            if options.structured is not None:
                return constrained_aggregator(model, options.structured)
            if options.tools:
                model = bind_tools(
                    model,
                    list(options.tools),
                    tool_choice=options.tool_choice,
                    **options.tool_kwargs,
                )
            kwargs = {**self.settings.call_kwargs, **options.aggregator_kwargs}
            return model.bind(**kwargs) if kwargs else model

        return build

    def _streams(self, options: RunOptions) -> bool:
        """Whether the answer is streamed token by token (not for one-piece answers)."""
        one_piece = options.structured is not None or self.settings.ranker_prompt is not None
        return options.stream_answer and not one_piece

    def _candidates(self) -> list[Runnable]:
        fallback = self.settings.fallback_aggregator
        return [self.model] if fallback is None else [self.model, fallback]

    def _call(
        self, state: MoAState, config: RunnableConfig, model: Runnable, options: RunOptions
    ) -> InnerCall:
        label = model_label(model)
        prompt = self.settings.ranker_prompt or self.settings.prompt
        messages = self.settings.messages(state, self.last_layer, prompt)
        _write(AggregationStarted(label, len(self.settings.references(state, self.last_layer))))
        metadata = {"moa_layer": self.last_layer + 1, "moa_model": label}
        inner = _inner_config(config, f"aggregator · {label}", metadata, options.aggregator_tags)
        streams = self._streams(options)
        limits = CallLimits(
            retry=self.settings.retry,
            timeout=self.settings.aggregator_timeout,
            first_token_timeout=self.settings.aggregator_first_token_timeout if streams else None,
            timeout_error=AggregatorTimeoutError,
            limit=self.settings.limit,
            cancelled=options.cancelled,
        )
        writer = get_stream_writer() if streams else None
        return InnerCall(self._builder(options), model, messages, inner, limits, writer)

    def _outcome(
        self,
        state: MoAState,
        call: InnerCall,
        answer: BaseMessage,
        options: RunOptions,
        failures: list[tuple[str, Exception]],
    ) -> dict:
        if self.settings.ranker_prompt is not None:
            answer = _ranked_choice(state, self.last_layer, answer)
        if options.stream_answer and not self._streams(options):
            get_stream_writer()(AnswerToken(AIMessageChunk(content=answer.content)))
        notes = [f"{label}: {describe_error(error)}" for label, error in failures]
        record = Proposal(
            layer=self.last_layer + 1,
            index=0,
            model=model_label(call.model),
            text=answer.text,
            usage=answer.usage_metadata if isinstance(answer, AIMessage) else None,
            latency_s=_elapsed(call.started),
            attempts=max(call.limits.attempts, 1),
            fallback_from="; ".join(notes) or None,
        )
        final = ensemble_answer(answer, state.get("proposals", []), record, self.settings)
        return {"messages": [final], "aggregation": record}

    def invoke(self, state: MoAState, config: RunnableConfig) -> dict:
        options, failures = _options(), []
        for model in self._candidates():
            call = self._call(state, config, model, options)
            try:
                answer = call.run_sync(self.background.for_model(model))
            except (StreamBrokenError, RunCancelledError) as error:
                raise _give_up(state, [*failures, (model_label(model), error)]) from None
            except Exception as error:
                failures.append((model_label(model), error))
                continue
            return self._outcome(state, call, answer, options, failures)
        raise _give_up(state, failures)

    async def ainvoke(self, state: MoAState, config: RunnableConfig) -> dict:
        options, failures = _options(), []
        for model in self._candidates():
            call = self._call(state, config, model, options)
            try:
                answer = await call.run_async()
            except StreamBrokenError as error:
                raise _give_up(state, [*failures, (model_label(model), error)]) from None
            except Exception as error:
                failures.append((model_label(model), error))
                continue
            return self._outcome(state, call, answer, options, failures)
        raise _give_up(state, failures)


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
    for key in ("finish_reason", "model_provider", "ranker"):
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


def _give_up(state: MoAState, failures: list[tuple[str, Exception]]) -> AggregatorFailedError:
    """The error for an aggregation that no aggregator could complete."""
    label, error = failures[-1]
    partial = error.partial_text if isinstance(error, StreamBrokenError) else None
    cause = error.error if isinstance(error, StreamBrokenError) else error
    failed = AggregatorFailedError(
        label, cause, state.get("proposals", []), partial_text=partial, failures=failures
    )
    failed.__cause__ = _masked(cause)
    return failed


def _masked(error: BaseException) -> BaseException:
    from langchain_moa import errors

    mask = getattr(errors, "mask_exception", None)
    return mask(error) if mask is not None else error


def _ranked_choice(state: MoAState, layer: int, ranking: BaseMessage) -> AIMessage:
    """The proposal the ranker chose, as the answer (with the ranker's usage).

    The first number in the ranker's reply that names a proposal wins; if none
    does, the first proposal is taken and ``ranker_parsed`` is false.
    """
    texts = [p.text for p in state.get("proposals", []) if p.layer == layer and p.ok]
    numbers = [int(n) for n in re.findall(r"\d+", ranking.text)]
    choice = next((n for n in numbers if 1 <= n <= len(texts)), None)
    return AIMessage(
        content=texts[(choice or 1) - 1],
        id=ranking.id,
        usage_metadata=ranking.usage_metadata if isinstance(ranking, AIMessage) else None,
        response_metadata={
            **ranking.response_metadata,
            "ranker": {"choice": choice or 1, "parsed": choice is not None, "output": ranking.text},
        },
    )


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


def _build_layer(
    layer: int,
    proposers: Sequence[Runnable],
    settings: EngineSettings,
    background: BackgroundModels,
) -> CompiledStateGraph:
    labels = [model_label(model) for model in proposers]

    def start(state: _LayerState) -> dict:
        update: dict[str, Any] = {}
        if settings.layer_deadline is not None:
            update["layer_run"] = uuid.uuid4().hex
            LAYER_WATCHES.open(update["layer_run"], settings.layer_deadline, settings.min_proposers)
        references = len(settings.references(state, layer - 1))
        _write(LayerStarted(layer, labels, references))
        return update

    def finish(state: _LayerState) -> dict:
        LAYER_WATCHES.close(state.get("layer_run"))
        mine = [p for p in state.get("proposals", []) if p.layer == layer]
        succeeded = sum(p.ok for p in mine)
        _write(LayerFinished(layer, succeeded, len(mine) - succeeded))
        if succeeded < settings.min_proposers:
            raise ProposersFailedError(layer, settings.min_proposers, mine)
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
    previous = START
    for layer, models in enumerate(proposer_layers, 1):
        name = f"layer_{layer}"
        subgraph = _build_layer(layer, _sampled(models), settings, background)
        builder.add_node(name, subgraph)
        builder.add_edge(previous, name)
        previous = name
    node = _Aggregator(len(proposer_layers), aggregator, settings, background)
    builder.add_node("aggregate", _node(node.invoke, node.ainvoke, "aggregate"))
    builder.add_edge(previous, "aggregate")
    builder.add_edge("aggregate", END)
    return builder.compile(name="mixture_of_agents")
