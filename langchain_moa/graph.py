"""The LangGraph state machine that runs Mixture-of-Agents.

Shape: ``START -> layer_1 -> ... -> layer_{L-1} -> aggregate -> END``. Each
``layer_k`` is a subgraph ``start -> proposer_0 .. proposer_{n-1} -> finish`` whose
proposer nodes run in parallel (threads on the sync path, tasks on the async
path). Proposer failures are recorded, not raised; ``finish`` enforces the quorum.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.utils import message_chunk_to_message
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.runnables.config import merge_configs
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
from langchain_moa.prompts import inject_references
from langchain_moa.state import MoAInput, MoAState, Proposal
from langchain_moa.structured_output import StructuredRequest, constrained_aggregator


@dataclass(frozen=True)
class RunOptions:
    """Per-call options of a graph run (LangGraph runtime context).

    Attributes:
        aggregator_kwargs: Extra call arguments for the aggregator (``stop``,
            bound tools, ...).
        stream_answer: Stream the aggregator's tokens to the ``custom`` stream.
        inner_tags: Tags added to every inner model run.
        tools: Tools (OpenAI format) bound to the aggregator with ``tool_choice``
            and ``tool_kwargs``; proposers see them with ``tool_choice="none"``.
        tool_choice: The caller's tool choice, passed to the aggregator.
        tool_kwargs: Further ``bind_tools`` arguments (``parallel_tool_calls``...).
        structured: A schema the aggregator's answer must follow (``json_schema``
            or ``json_mode``); the aggregator then answers in one piece.
    """

    aggregator_kwargs: dict[str, Any] = field(default_factory=dict)
    stream_answer: bool = False
    inner_tags: tuple[str, ...] = ()
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: Any = None
    tool_kwargs: dict[str, Any] = field(default_factory=dict)
    structured: StructuredRequest | None = None


class _LayerOutput(TypedDict):
    proposals: list[Proposal]


def _options() -> RunOptions:
    context = get_runtime(RunOptions).context
    return context if isinstance(context, RunOptions) else RunOptions()


def _references(state: MoAState, layer: int) -> list[str]:
    """Texts of the successful proposals of ``layer`` (empty for layer 0)."""
    return [p.text for p in state.get("proposals", []) if p.layer == layer and p.ok]  # type: ignore[misc]


def _inner_config(
    config: RunnableConfig, run_name: str, metadata: dict[str, Any]
) -> RunnableConfig:
    tags = ["moa:inner", *_options().inner_tags]
    return merge_configs(config, {"run_name": run_name, "metadata": metadata, "tags": tags})


@dataclass
class _Proposer:
    """A proposer node: one model answering with the previous layer's references."""

    layer: int
    index: int
    model: BaseChatModel
    call_kwargs: dict[str, Any]
    label: str
    prompt: str

    def _runnable(self) -> Runnable:
        """The model, with the caller's tools visible but not callable."""
        options = _options()
        model: Runnable = self.model
        if options.tools:
            model = self.model.bind_tools(list(options.tools), tool_choice="none")
        return model.bind(**self.call_kwargs) if self.call_kwargs else model

    def _prepare(
        self, state: MoAState, config: RunnableConfig
    ) -> tuple[list[BaseMessage], RunnableConfig]:
        messages = inject_references(
            state["messages"], _references(state, self.layer - 1), self.prompt
        )
        metadata = {
            "moa_layer": self.layer,
            "moa_proposer": self.index,
            "moa_model": self.label,
        }
        name = f"layer {self.layer} · proposer {self.index} · {self.label}"
        return messages, _inner_config(config, name, metadata)

    def _record(
        self, started: float, message: Any = None, error: BaseException | None = None
    ) -> dict:
        text = None
        usage = None
        if isinstance(message, AIMessage):
            text, usage = _proposal_text(message), message.usage_metadata
        proposal = Proposal(
            layer=self.layer,
            index=self.index,
            model=self.label,
            text=text,
            usage=usage,
            latency_s=round(time.perf_counter() - started, 4),
            error=describe_error(error) if error is not None else None,
        )
        get_stream_writer()(ProposerFinished(proposal))
        return {"proposals": [proposal]}

    def invoke(self, state: MoAState, config: RunnableConfig) -> dict:
        messages, inner = self._prepare(state, config)
        started = time.perf_counter()
        try:
            return self._record(started, self._runnable().invoke(messages, inner))
        except Exception as error:
            return self._record(started, error=error)

    async def ainvoke(self, state: MoAState, config: RunnableConfig) -> dict:
        messages, inner = self._prepare(state, config)
        started = time.perf_counter()
        try:
            return self._record(started, await self._runnable().ainvoke(messages, inner))
        except Exception as error:
            return self._record(started, error=error)


@dataclass
class _Aggregator:
    """The aggregator node: synthesizes the last layer's answers into one."""

    last_layer: int
    model: BaseChatModel
    call_kwargs: dict[str, Any]
    label: str
    prompt: str

    def _runnable(self, options: RunOptions) -> Runnable:
        """The model with the caller's tools and per-call arguments bound."""
        if options.structured is not None:
            return constrained_aggregator(self.model, options.structured)
        model: Runnable = self.model
        if options.tools:
            model = self.model.bind_tools(
                list(options.tools), tool_choice=options.tool_choice, **options.tool_kwargs
            )
        kwargs = {**self.call_kwargs, **options.aggregator_kwargs}
        return model.bind(**kwargs) if kwargs else model

    def _prepare(
        self, state: MoAState, config: RunnableConfig
    ) -> tuple[list[BaseMessage], RunnableConfig]:
        references = _references(state, self.last_layer)
        get_stream_writer()(AggregationStarted(self.label, len(references)))
        messages = inject_references(state["messages"], references, self.prompt)
        metadata = {"moa_layer": self.last_layer + 1, "moa_model": self.label}
        return messages, _inner_config(config, f"aggregator · {self.label}", metadata)

    def _fail(self, state: MoAState, error: Exception) -> AggregatorFailedError:
        return AggregatorFailedError(self.label, error, state.get("proposals", []))

    def _done(self, started: float, answer: BaseMessage, *, stream: bool = False) -> dict:
        if stream:  # an answer that could not be streamed goes out as one chunk
            get_stream_writer()(AnswerToken(AIMessageChunk(content=answer.content)))
        usage = answer.usage_metadata if isinstance(answer, AIMessage) else None
        record = Proposal(
            layer=self.last_layer + 1,
            index=0,
            model=self.label,
            text=answer.text,
            usage=usage,
            latency_s=round(time.perf_counter() - started, 4),
        )
        return {"messages": [answer], "aggregation": record}

    def invoke(self, state: MoAState, config: RunnableConfig) -> dict:
        messages, inner = self._prepare(state, config)
        options, started = _options(), time.perf_counter()
        try:
            if not options.stream_answer or options.structured:
                answer = self._runnable(options).invoke(messages, inner)
                return self._done(started, answer, stream=options.stream_answer)
            writer = get_stream_writer()
            total: AIMessageChunk | None = None
            for chunk in self._runnable(options).stream(messages, inner):
                writer(AnswerToken(chunk))
                total = chunk if total is None else total + chunk
            return self._done(started, _to_message(total))
        except Exception as error:
            raise self._fail(state, error) from error

    async def ainvoke(self, state: MoAState, config: RunnableConfig) -> dict:
        messages, inner = self._prepare(state, config)
        options, started = _options(), time.perf_counter()
        try:
            if not options.stream_answer or options.structured:
                answer = await self._runnable(options).ainvoke(messages, inner)
                return self._done(started, answer, stream=options.stream_answer)
            writer = get_stream_writer()
            total: AIMessageChunk | None = None
            async for chunk in self._runnable(options).astream(messages, inner):
                writer(AnswerToken(chunk))
                total = chunk if total is None else total + chunk
            return self._done(started, _to_message(total))
        except Exception as error:
            raise self._fail(state, error) from error


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


def _build_layer(
    layer: int,
    proposers: Sequence[BaseChatModel],
    call_kwargs: dict[str, Any],
    prompt: str,
    min_proposers: int,
) -> CompiledStateGraph:
    labels = [model_label(model) for model in proposers]

    def start(state: MoAState) -> dict:
        references = len(_references(state, layer - 1))
        get_stream_writer()(LayerStarted(layer, labels, references))
        return {}

    def finish(state: MoAState) -> dict:
        mine = [p for p in state.get("proposals", []) if p.layer == layer]
        succeeded = sum(p.ok for p in mine)
        get_stream_writer()(LayerFinished(layer, succeeded, len(mine) - succeeded))
        if succeeded < min_proposers:
            raise ProposersFailedError(layer, min_proposers, mine)
        return {}

    builder = StateGraph(MoAState, context_schema=RunOptions, output_schema=_LayerOutput)
    builder.add_node("start", start)
    builder.add_edge(START, "start")
    names = []
    for index, (model, label) in enumerate(zip(proposers, labels, strict=True)):
        node = _Proposer(layer, index, model, call_kwargs, label, prompt)
        name = f"proposer_{index}"
        builder.add_node(name, RunnableLambda(node.invoke, afunc=node.ainvoke, name=name))
        builder.add_edge("start", name)
        names.append(name)
    builder.add_node("finish", finish)
    builder.add_edge(names, "finish")
    builder.add_edge("finish", END)
    return builder.compile(name=f"layer_{layer}")


def build_moa_graph(
    proposer_layers: Sequence[Sequence[BaseChatModel]],
    aggregator: BaseChatModel,
    *,
    prompt: str,
    min_proposers: int = 1,
    call_kwargs: dict[str, Any] | None = None,
) -> CompiledStateGraph:
    """Compile the Mixture-of-Agents graph.

    Args:
        proposer_layers: One list of proposer models per proposer layer.
        aggregator: The final aggregator model.
        prompt: The aggregate-and-synthesize prompt.
        min_proposers: Successful answers each layer needs to go on.
        call_kwargs: Generation arguments bound to every inner model
            (``temperature``, ``max_tokens``).

    Returns:
        A compiled graph. Input ``{"messages": [...]}``; output ``{"messages":
        [..., answer], "proposals": [Proposal, ...]}``. Per-call options go in
        ``context=RunOptions(...)``.
    """
    bound = call_kwargs or {}
    builder = StateGraph(MoAState, context_schema=RunOptions, input_schema=MoAInput)
    previous = START
    for layer, models in enumerate(proposer_layers, 1):
        name = f"layer_{layer}"
        builder.add_node(
            name,
            _build_layer(layer, models, bound, prompt, min_proposers),
        )
        builder.add_edge(previous, name)
        previous = name
    node = _Aggregator(len(proposer_layers), aggregator, bound, model_label(aggregator), prompt)
    builder.add_node("aggregate", RunnableLambda(node.invoke, afunc=node.ainvoke, name="aggregate"))
    builder.add_edge(previous, "aggregate")
    builder.add_edge("aggregate", END)
    return builder.compile(name="mixture_of_agents")
