"""The proposer layers: the ``layer_k`` subgraphs and their proposer nodes.

Each ``layer_k`` is a subgraph ``start -> proposer_0 .. proposer_{n-1} -> finish``
whose proposer nodes run in parallel (threads on the sync path, tasks on the
async path). Proposer failures are recorded, not raised; ``finish`` enforces
the quorum. The cost controls (``layer_controls``) decide in ``start`` whether
the layer runs, guard each proposer (the circuit breaker) and select the
references in ``finish``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from typing_extensions import TypedDict

from langchain_moa.calls import BackgroundModels, InnerCall, inner_config
from langchain_moa.engine import (
    EngineSettings,
    RunOptions,
    current_options,
    elapsed,
    node,
    proposal_text,
    timing,
    write,
)
from langchain_moa.errors import ProposersFailedError, describe_error
from langchain_moa.events import LayerFinished, LayerStarted, ProposerFinished
from langchain_moa.inner_models import bind_tools, model_label
from langchain_moa.layer_controls import LayerControls
from langchain_moa.resilience import (
    LAYER_WATCHES,
    CallLimits,
    ProposerTimeoutError,
    RunCancelledError,
)
from langchain_moa.state import MoAState, Proposal


class LayerState(MoAState, total=False):
    """A layer subgraph's state: the graph's, plus its deadline watch's id."""

    layer_run: str


class _LayerOutput(TypedDict, total=False):
    proposals: list[Proposal]
    run_started: float
    controls: dict[str, Any]


@dataclass
class Proposer:
    """A proposer node: one model answering with the previous layer's references."""

    layer: int
    index: int
    model: Runnable
    label: str
    settings: EngineSettings
    background: BackgroundModels

    def _build(self, model: Runnable) -> Runnable:
        """The model, with the caller's tools visible but not callable."""
        options = current_options()
        if options.tools:
            # A model without tool support answers from the conversation alone.
            with suppress(NotImplementedError):
                model = bind_tools(model, list(options.tools), tool_choice="none")
        kwargs = self.settings.call_kwargs
        return model.bind(**kwargs) if kwargs else model

    def _call(self, state: LayerState, config: RunnableConfig) -> InnerCall:
        options = current_options()
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
        self,
        state: LayerState,
        call: InnerCall,
        message: Any = None,
        error: BaseException | None = None,
    ) -> dict:
        if isinstance(error, RunCancelledError):
            raise error
        text = usage = None
        if isinstance(message, AIMessage):
            text, usage = proposal_text(message), message.usage_metadata
            if call.limits.watch is not None:
                call.limits.watch.count_success()
        latency = elapsed(call.started)
        proposal = Proposal(
            layer=self.layer,
            index=self.index,
            model=self.label,
            text=text,
            usage=usage,
            latency_s=latency,
            error=describe_error(error) if error is not None else None,
            attempts=max(call.limits.attempts, 1),
            **timing(state, latency),
        )
        write(ProposerFinished(proposal))
        return {"proposals": [proposal]}

    def invoke(self, state: LayerState, config: RunnableConfig) -> dict:
        """Answer (sync path); the update records the proposal, failed or not."""
        call = self._call(state, config)
        try:
            answer = call.run_sync(self.background.for_model(self.model))
        except Exception as error:
            return self._record(state, call, error=error)
        return self._record(state, call, answer)

    async def ainvoke(self, state: LayerState, config: RunnableConfig) -> dict:
        """Answer (async path); the update records the proposal, failed or not."""
        call = self._call(state, config)
        try:
            answer = await call.run_async()
        except Exception as error:
            return self._record(state, call, error=error)
        return self._record(state, call, answer)

    async def astreamed(
        self,
        state: LayerState,
        config: RunnableConfig,
        on_chunk: Callable[[AIMessageChunk], None] | None,
    ) -> dict:
        """Answer as ``ainvoke`` does, streamed to ``on_chunk``; return the update.

        Args:
            state: The state the proposer reads (with its layer's ``layer_run``).
            config: The node's config.
            on_chunk: Gets every chunk as it arrives (``None``: not streamed).
        """
        call = self._call(state, config)
        if on_chunk is not None:
            call.writer = lambda token: on_chunk(token.chunk)
        try:
            answer = await call.run_async()
        except Exception as error:
            return self._record(state, call, error=error)
        return self._record(state, call, answer)


def open_layer(
    layer: int,
    labels: list[str],
    settings: EngineSettings,
    state: MoAState,
    controls: LayerControls,
) -> dict[str, Any]:
    """Start a layer that runs: its deadline watch (the update naming it) and ``layer_started``."""
    update: dict[str, Any] = {}
    deadline, quorum = controls.watch()
    if deadline is not None:
        update["layer_run"] = uuid.uuid4().hex
        LAYER_WATCHES.open(update["layer_run"], deadline, quorum)
    references = len(settings.references(state, layer - 1))
    write(LayerStarted(layer, labels, references))
    return update


def close_layer(
    layer: int, settings: EngineSettings, layer_run: str | None, mine: Sequence[Proposal]
) -> None:
    """End a layer: ``layer_finished``, then the quorum.

    Raises:
        ProposersFailedError: Fewer than ``min_proposers`` answered.
    """
    LAYER_WATCHES.close(layer_run)
    succeeded = sum(p.ok for p in mine)
    write(LayerFinished(layer, succeeded, len(mine) - succeeded))
    if succeeded < settings.min_proposers:
        raise ProposersFailedError(layer, settings.min_proposers, list(mine))


def build_layer(
    layer: int,
    proposers: Sequence[Runnable],
    settings: EngineSettings,
    background: BackgroundModels,
    controls: LayerControls,
) -> CompiledStateGraph:
    """Compile the subgraph of proposer layer ``layer`` (from 1)."""
    labels = [model_label(model) for model in proposers]

    def start(state: LayerState) -> dict:
        update, skipped = controls.before(state, current_options())
        if layer == 1:
            # The first layer's start is the run's start: every record's offsets count from it.
            update["run_started"] = time.time()
        if skipped:
            return update
        return {**update, **open_layer(layer, labels, settings, state, controls)}

    def check(state: LayerState) -> bool:
        if controls.skipped(state):
            LAYER_WATCHES.close(state.get("layer_run"))
            return False
        mine = [p for p in state.get("proposals", []) if p.layer == layer]
        close_layer(layer, settings, state.get("layer_run"), mine)
        return True

    def finish(state: LayerState, config: RunnableConfig) -> dict:
        return controls.after(state, config, current_options()) if check(state) else {}

    async def afinish(state: LayerState, config: RunnableConfig) -> dict:
        return await controls.aafter(state, config, current_options()) if check(state) else {}

    builder = StateGraph(LayerState, context_schema=RunOptions, output_schema=_LayerOutput)
    builder.add_node("start", start)
    builder.add_edge(START, "start")
    names = []
    for index, (model, label) in enumerate(zip(proposers, labels, strict=True)):
        proposer = Proposer(layer, index, model, label, settings, background)
        name = f"proposer_{index}"
        builder.add_node(name, node(*controls.guard(proposer), name))
        builder.add_edge("start", name)
        names.append(name)
    builder.add_node("finish", node(finish, afinish, "finish"))
    builder.add_edge(names, "finish")
    builder.add_edge("finish", END)
    return builder.compile(name=f"layer_{layer}")
