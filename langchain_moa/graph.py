"""The LangGraph state machine that runs Mixture-of-Agents.

Shape: ``START -> layer_1 -> ... -> layer_{L-1} -> aggregate -> END``. Each
``layer_k`` is a subgraph ``start -> proposer_0 .. proposer_{n-1} -> finish`` whose
proposer nodes run in parallel (threads on the sync path, tasks on the async
path). Proposer failures are recorded, not raised; ``finish`` enforces the quorum.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.utils import message_chunk_to_message
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import merge_configs
from langgraph._internal._runnable import RunnableCallable
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import get_runtime
from typing_extensions import TypedDict

from langchain_moa.errors import (
    AggregatorFailedError,
    ProposersFailedError,
    describe_error,
)
from langchain_moa.events import (
    AggregationStarted,
    AnswerToken,
    LayerFinished,
    LayerStarted,
    ProposerFinished,
)
from langchain_moa.inner_models import model_label
from langchain_moa.prompts import fit_references, inject_references
from langchain_moa.resilience import (
    CallLimits,
    ConcurrencyLimit,
    LayerWatch,
    RetryPolicy,
    call_async,
    call_sync,
    is_transient,
)
from langchain_moa.state import MoAInput, MoAState, Proposal
from langchain_moa.structured_output import StructuredRequest, constrained_aggregator


@dataclass(frozen=True)
class RunOptions:
    """Per-call options of a graph run (LangGraph runtime context).

    Attributes:
        aggregator_kwargs: Extra call arguments for the aggregator (``stop``, ...).
        stream_answer: Stream the aggregator's tokens to the ``custom`` stream.
        inner_tags: Tags added to every inner model run.
        tools: Tools (OpenAI format) bound to the aggregator with ``tool_choice``
            and ``tool_kwargs``; proposers see them with ``tool_choice="none"``.
        tool_choice: The caller's tool choice, passed to the aggregator.
        tool_kwargs: Further ``bind_tools`` arguments (``parallel_tool_calls``...).
        structured: A schema the aggregator's answer must follow (``json_schema``
            or ``json_mode``); the aggregator then answers in one piece.
        watches: Deadline watches of this run's layers (filled as layers start).
    """

    aggregator_kwargs: dict[str, Any] = field(default_factory=dict)
    stream_answer: bool = False
    inner_tags: tuple[str, ...] = ()
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: Any = None
    tool_kwargs: dict[str, Any] = field(default_factory=dict)
    structured: StructuredRequest | None = None
    watches: dict[int, LayerWatch] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineSettings:
    """How the graph calls its models (fixed per ensemble).

    Attributes:
        prompt: The aggregate-and-synthesize prompt.
        call_kwargs: Generation arguments for every inner call.
        min_proposers: Successful answers each layer needs to go on.
        retry: Retry policy of every inner call.
        proposer_timeout: Seconds per proposer call, retries included.
        aggregator_timeout: Seconds for the aggregator (non-streaming calls).
        layer_deadline: Seconds after which, once ``min_proposers`` answered,
            a layer's stragglers are cancelled.
        max_reference_chars: Character budget of one agent's references.
        limit: Bound on in-flight inner calls.
        fallback_aggregator: Aggregates instead if the aggregator fails.
        ranker_prompt: If set, the aggregator only picks the best proposal
            (the paper's LLM-ranker baseline) with this prompt.
    """

    prompt: str
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    min_proposers: int = 1
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_retries=0))
    proposer_timeout: float | None = None
    aggregator_timeout: float | None = None
    layer_deadline: float | None = None
    max_reference_chars: int | None = None
    limit: ConcurrencyLimit | None = None
    fallback_aggregator: BaseChatModel | None = None
    ranker_prompt: str | None = None

    def references(self, state: MoAState, layer: int) -> list[str]:
        """The successful answers of ``layer``, fitted to the budget."""
        texts = [p.text for p in state.get("proposals", []) if p.layer == layer and p.ok]
        return fit_references(texts, self.max_reference_chars)  # type: ignore[arg-type]

    def limits(self, timeout: float | None, watch: LayerWatch | None = None) -> CallLimits:
        """Fresh call limits for one inner call."""
        return CallLimits(retry=self.retry, timeout=timeout, watch=watch, limit=self.limit)


class _LayerOutput(TypedDict):
    proposals: list[Proposal]


_DEFAULT_OPTIONS = RunOptions()


def _options() -> RunOptions:
    context = get_runtime(RunOptions).context
    return context if isinstance(context, RunOptions) else _DEFAULT_OPTIONS


def _inner_config(
    config: RunnableConfig, run_name: str, metadata: dict[str, Any]
) -> RunnableConfig:
    tags = ["moa:inner", *_options().inner_tags]
    return merge_configs(config, {"run_name": run_name, "metadata": metadata, "tags": tags})


def _elapsed(started: float) -> float:
    return round(time.perf_counter() - started, 4)


@dataclass
class _Proposer:
    """A proposer node: one model answering with the previous layer's references."""

    layer: int
    index: int
    model: BaseChatModel
    label: str
    settings: EngineSettings

    def _runnable(self) -> Runnable:
        """The model, with the caller's tools visible but not callable."""
        options = _options()
        model: Runnable = self.model
        if options.tools:
            model = self.model.bind_tools(list(options.tools), tool_choice="none")
        kwargs = self.settings.call_kwargs
        return model.bind(**kwargs) if kwargs else model

    def _prepare(
        self, state: MoAState, config: RunnableConfig
    ) -> tuple[list[BaseMessage], RunnableConfig, CallLimits]:
        references = self.settings.references(state, self.layer - 1)
        messages = inject_references(state["messages"], references, self.settings.prompt)
        metadata = {"moa_layer": self.layer, "moa_proposer": self.index, "moa_model": self.label}
        name = f"layer {self.layer} · proposer {self.index} · {self.label}"
        watch = _options().watches.get(self.layer)
        limits = self.settings.limits(self.settings.proposer_timeout, watch)
        return messages, _inner_config(config, name, metadata), limits

    def _record(
        self,
        started: float,
        limits: CallLimits,
        message: Any = None,
        error: BaseException | None = None,
    ) -> dict:
        text = usage = None
        if isinstance(message, AIMessage):
            text, usage = _proposal_text(message), message.usage_metadata
            if limits.watch is not None:
                limits.watch.succeeded()
        proposal = Proposal(
            layer=self.layer,
            index=self.index,
            model=self.label,
            text=text,
            usage=usage,
            latency_s=_elapsed(started),
            error=describe_error(error) if error is not None else None,
            attempts=max(limits.attempts, 1),
        )
        get_stream_writer()(ProposerFinished(proposal))
        return {"proposals": [proposal]}

    def invoke(self, state: MoAState, config: RunnableConfig) -> dict:
        messages, inner, limits = self._prepare(state, config)
        runnable, started = self._runnable(), time.perf_counter()
        try:
            answer = call_sync(
                lambda: runnable.invoke(messages, inner),
                lambda: runnable.ainvoke(messages, inner),
                limits,
            )
        except Exception as error:
            return self._record(started, limits, error=error)
        return self._record(started, limits, answer)

    async def ainvoke(self, state: MoAState, config: RunnableConfig) -> dict:
        messages, inner, limits = self._prepare(state, config)
        runnable, started = self._runnable(), time.perf_counter()
        try:
            answer = await call_async(lambda: runnable.ainvoke(messages, inner), limits)
        except Exception as error:
            return self._record(started, limits, error=error)
        return self._record(started, limits, answer)


@dataclass
class _Aggregator:
    """The aggregator node: synthesizes the last layer's answers into one.

    On failure (after retries) the fallback aggregator, if any, answers instead;
    a streamed answer is retried or handed over only before its first chunk.
    """

    last_layer: int
    model: BaseChatModel
    settings: EngineSettings

    def _runnable(self, model: BaseChatModel, options: RunOptions) -> Runnable:
        """``model`` with the caller's tools and per-call arguments bound."""
        if options.structured is not None:
            return constrained_aggregator(model, options.structured)
        runnable: Runnable = model
        if options.tools:
            runnable = model.bind_tools(
                list(options.tools), tool_choice=options.tool_choice, **options.tool_kwargs
            )
        kwargs = {**self.settings.call_kwargs, **options.aggregator_kwargs}
        return runnable.bind(**kwargs) if kwargs else runnable

    def _streams(self, options: RunOptions) -> bool:
        """Whether the answer is streamed token by token (not for one-piece answers)."""
        one_piece = options.structured is not None or self.settings.ranker_prompt is not None
        return options.stream_answer and not one_piece

    def _finish(self, state: MoAState, answer: BaseMessage, options: RunOptions) -> BaseMessage:
        """Apply the ranker's choice, if ranking, and stream a one-piece answer."""
        if self.settings.ranker_prompt is not None:
            answer = _ranked_choice(state, self.last_layer, answer)
        if options.stream_answer:
            get_stream_writer()(AnswerToken(AIMessageChunk(content=answer.content)))
        return answer

    def _candidates(self) -> list[BaseChatModel]:
        fallback = self.settings.fallback_aggregator
        return [self.model] if fallback is None else [self.model, fallback]

    def _prepare(
        self, state: MoAState, config: RunnableConfig, model: BaseChatModel
    ) -> tuple[list[BaseMessage], RunnableConfig]:
        label = model_label(model)
        references = self.settings.references(state, self.last_layer)
        get_stream_writer()(AggregationStarted(label, len(references)))
        prompt = self.settings.ranker_prompt or self.settings.prompt
        messages = inject_references(state["messages"], references, prompt)
        metadata = {"moa_layer": self.last_layer + 1, "moa_model": label}
        return messages, _inner_config(config, f"aggregator · {label}", metadata)

    def _done(
        self,
        model: BaseChatModel,
        started: float,
        answer: BaseMessage,
        limits: CallLimits,
        failures: list[str],
    ) -> dict:
        usage = answer.usage_metadata if isinstance(answer, AIMessage) else None
        record = Proposal(
            layer=self.last_layer + 1,
            index=0,
            model=model_label(model),
            text=answer.text,
            usage=usage,
            latency_s=_elapsed(started),
            attempts=max(limits.attempts, 1),
            fallback_from="; ".join(failures) or None,
        )
        return {"messages": [answer], "aggregation": record}

    def _attempt(
        self, state: MoAState, config: RunnableConfig, model: BaseChatModel, options: RunOptions
    ) -> _Attempt:
        messages, inner = self._prepare(state, config, model)
        limits = self.settings.limits(self.settings.aggregator_timeout)
        return _Attempt(self._runnable(model, options), messages, inner, limits)

    def _outcome(
        self,
        state: MoAState,
        model: BaseChatModel,
        attempt: _Attempt,
        answer: BaseMessage,
        options: RunOptions,
        failures: list[tuple[str, Exception]],
    ) -> dict:
        if not self._streams(options):
            answer = self._finish(state, answer, options)
        notes = [f"{label}: {describe_error(error)}" for label, error in failures]
        return self._done(model, attempt.started, answer, attempt.limits, notes)

    def invoke(self, state: MoAState, config: RunnableConfig) -> dict:
        options, failures = _options(), []
        for model in self._candidates():
            attempt = self._attempt(state, config, model, options)
            try:
                answer = attempt.run_sync(stream=self._streams(options))
            except _StreamBroken as broken:
                failures = [(model_label(model), broken.error)]
                break
            except Exception as error:
                failures.append((model_label(model), error))
                continue
            return self._outcome(state, model, attempt, answer, options, failures)
        raise _give_up(state, failures)

    async def ainvoke(self, state: MoAState, config: RunnableConfig) -> dict:
        options, failures = _options(), []
        for model in self._candidates():
            attempt = self._attempt(state, config, model, options)
            try:
                answer = await attempt.run_async(stream=self._streams(options))
            except _StreamBroken as broken:
                failures = [(model_label(model), broken.error)]
                break
            except Exception as error:
                failures.append((model_label(model), error))
                continue
            return self._outcome(state, model, attempt, answer, options, failures)
        raise _give_up(state, failures)


@dataclass
class _Attempt:
    """One aggregator model's call: retries and timeout included."""

    runnable: Runnable
    messages: list[BaseMessage]
    config: RunnableConfig
    limits: CallLimits
    started: float = field(default_factory=time.perf_counter)

    def run_sync(self, *, stream: bool) -> BaseMessage:
        if stream:
            return _stream_with_retries(
                lambda: self.runnable.stream(self.messages, self.config), self.limits
            )
        return call_sync(
            lambda: self.runnable.invoke(self.messages, self.config),
            lambda: self.runnable.ainvoke(self.messages, self.config),
            self.limits,
        )

    async def run_async(self, *, stream: bool) -> BaseMessage:
        if stream:
            return await _astream_with_retries(
                lambda: self.runnable.astream(self.messages, self.config), self.limits
            )
        return await call_async(
            lambda: self.runnable.ainvoke(self.messages, self.config), self.limits
        )


def _give_up(state: MoAState, failures: list[tuple[str, Exception]]) -> AggregatorFailedError:
    """The error for an aggregation that no aggregator could complete."""
    label, error = failures[-1]
    failed = AggregatorFailedError(label, error, state.get("proposals", []))
    failed.__cause__ = error
    return failed


class _StreamBroken(Exception):
    """A streamed answer failed after its first chunk went out: no retry possible."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


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
        usage_metadata=ranking.usage_metadata if isinstance(ranking, AIMessage) else None,
        response_metadata={
            **ranking.response_metadata,
            "ranker": {"choice": choice or 1, "parsed": choice is not None, "output": ranking.text},
        },
    )


def _stream_with_retries(open_stream: Any, limits: CallLimits) -> BaseMessage:
    writer = get_stream_writer()
    while True:
        limits.attempts += 1
        total: AIMessageChunk | None = None
        try:
            for chunk in open_stream():
                writer(AnswerToken(chunk))
                total = chunk if total is None else total + chunk
            return _to_message(total)
        except Exception as error:
            if total is not None:
                raise _StreamBroken(error) from error
            if limits.attempts > limits.retry.max_retries or not is_transient(error):
                raise
            time.sleep(limits.retry.delay(limits.attempts, error))


async def _astream_with_retries(open_stream: Any, limits: CallLimits) -> BaseMessage:
    writer = get_stream_writer()
    while True:
        limits.attempts += 1
        total: AIMessageChunk | None = None
        try:
            async for chunk in open_stream():
                writer(AnswerToken(chunk))
                total = chunk if total is None else total + chunk
            return _to_message(total)
        except Exception as error:
            if total is not None:
                raise _StreamBroken(error) from error
            if limits.attempts > limits.retry.max_retries or not is_transient(error):
                raise
            await asyncio.sleep(limits.retry.delay(limits.attempts, error))


def _to_message(total: AIMessageChunk | None) -> BaseMessage:
    if total is None:
        msg = "the aggregator's stream ended without a message"
        raise ValueError(msg)
    return message_chunk_to_message(total)


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
    layer: int, proposers: Sequence[BaseChatModel], settings: EngineSettings
) -> CompiledStateGraph:
    labels = [model_label(model) for model in proposers]

    def start(state: MoAState) -> dict:
        options = _options()
        if options is not _DEFAULT_OPTIONS:
            options.watches[layer] = LayerWatch(settings.layer_deadline, settings.min_proposers)
        references = len(settings.references(state, layer - 1))
        get_stream_writer()(LayerStarted(layer, labels, references))
        return {}

    def finish(state: MoAState) -> dict:
        mine = [p for p in state.get("proposals", []) if p.layer == layer]
        succeeded = sum(p.ok for p in mine)
        get_stream_writer()(LayerFinished(layer, succeeded, len(mine) - succeeded))
        if succeeded < settings.min_proposers:
            raise ProposersFailedError(layer, settings.min_proposers, mine)
        return {}

    builder = StateGraph(MoAState, context_schema=RunOptions, output_schema=_LayerOutput)
    builder.add_node("start", start)
    builder.add_edge(START, "start")
    names = []
    for index, (model, label) in enumerate(zip(proposers, labels, strict=True)):
        node = _Proposer(layer, index, model, label, settings)
        name = f"proposer_{index}"
        builder.add_node(name, _node(node.invoke, node.ainvoke, name))
        builder.add_edge("start", name)
        names.append(name)
    builder.add_node("finish", finish)
    builder.add_edge(names, "finish")
    builder.add_edge("finish", END)
    return builder.compile(name=f"layer_{layer}")


def build_moa_graph(
    proposer_layers: Sequence[Sequence[BaseChatModel]],
    aggregator: BaseChatModel,
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
        Per-call options go in ``context=RunOptions(...)``; layer deadlines
        apply only when a ``RunOptions`` context is given.
    """
    builder = StateGraph(MoAState, context_schema=RunOptions, input_schema=MoAInput)
    previous = START
    for layer, models in enumerate(proposer_layers, 1):
        name = f"layer_{layer}"
        builder.add_node(name, _build_layer(layer, models, settings))
        builder.add_edge(previous, name)
        previous = name
    node = _Aggregator(len(proposer_layers), aggregator, settings)
    builder.add_node("aggregate", _node(node.invoke, node.ainvoke, "aggregate"))
    builder.add_edge(previous, "aggregate")
    builder.add_edge("aggregate", END)
    return builder.compile(name="mixture_of_agents")
