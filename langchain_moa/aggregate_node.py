"""The ``aggregate`` node: the ensemble's aggregation strategy writes the answer.

The strategy (``langchain_moa.aggregation``) decides which references the
aggregator reads and how the answer is written; its job makes the calls. This
node builds the job, records the result (the aggregator's record, with its
timing, and the ensemble's answer) and, for a strategy that runs the last
proposer layer itself (``"staircase"``), gives it that layer as ``job.layer``
with the layer's controls: the budget check, the circuit breaker and the quorum.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.config import get_stream_writer

from langchain_moa.aggregation import Aggregated, AggregationJob
from langchain_moa.calls import BackgroundModels
from langchain_moa.engine import (
    EngineSettings,
    current_options,
    elapsed,
    ensemble_answer,
    timing,
)
from langchain_moa.errors import describe_error
from langchain_moa.events import AnswerToken
from langchain_moa.inner_models import model_label
from langchain_moa.layer_controls import LayerControls
from langchain_moa.layers import Proposer, close_layer, open_layer
from langchain_moa.notes import CONTROLS, merge_notes
from langchain_moa.state import MoAState, Proposal


@dataclass
class _Streamed:
    """One proposer of the in-node layer as a node the layer's guard can wrap."""

    proposer: Proposer
    on_chunk: Callable[[AIMessageChunk], None] | None

    @property
    def index(self) -> int:
        return self.proposer.index

    @property
    def label(self) -> str:
        return self.proposer.label

    async def ainvoke(self, state: MoAState, config: RunnableConfig) -> dict:
        return await self.proposer.astreamed(state, config, self.on_chunk)  # type: ignore[arg-type]


@dataclass
class _NodeLayer:
    """The last proposer layer, run by the aggregation strategy inside the ``aggregate`` node.

    It is the strategy's ``job.layer`` (``aggregation.ProposerLayer``). What its
    controls decide (tripped circuits, spending) is kept in ``notes`` for the
    node's update.
    """

    number: int
    proposers: list[Proposer]
    settings: EngineSettings
    controls: LayerControls
    config: RunnableConfig
    job: AggregationJob
    layer_run: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """The proposers' names, in order."""
        return [p.label for p in self.proposers]

    def open(self) -> None:
        """Start the layer: ``layer_started`` and its deadline watch."""
        state = self.job.state
        update = open_layer(self.number, self.labels, self.settings, state, self.controls)
        self.layer_run = update.get("layer_run")
        self.job.state = {**state, **update}  # type: ignore[typeddict-item]

    async def run(
        self, index: int, on_chunk: Callable[[AIMessageChunk], None] | None = None
    ) -> Proposal:
        """Run proposer ``index`` (streamed to ``on_chunk`` if given); return its record.

        A proposer whose circuit is open (it failed for good earlier in the
        run) is not called; its record says so.
        """
        proposer = self.proposers[index]
        _, guarded = self.controls.guard(_Streamed(proposer, on_chunk))
        update = await guarded(self.job.state, self.config)
        self.notes = merge_notes(self.notes, update.get(CONTROLS))
        return update["proposals"][0]

    def close(self, proposals: Sequence[Proposal]) -> None:
        """End the layer: ``layer_finished``, the quorum, then what the controls note."""
        close_layer(self.number, self.settings, self.layer_run, proposals)
        update = self.controls.after(self.job.state, self.config, self.job.options)
        self.notes = merge_notes(self.notes, update.get(CONTROLS))


@dataclass
class Aggregator:
    """The aggregate node: the ensemble's aggregation strategy writes the answer.

    The strategy's job makes the calls, with the fallback aggregator answering
    for one that fails (a streamed call is retried or handed over only before
    its first token reached the caller). This node records the result: the
    aggregator's record and the ensemble's answer. With ``layer_models`` (and
    their ``layer_controls``), the strategy also runs the last proposer layer
    (the graph leaves that layer out).
    """

    last_layer: int
    model: Runnable
    settings: EngineSettings
    background: BackgroundModels
    layer_models: Sequence[Runnable] = ()
    layer_controls: LayerControls | None = None

    def __post_init__(self) -> None:
        self._proposers = [
            Proposer(self.last_layer, i, m, model_label(m), self.settings, self.background)
            for i, m in enumerate(self.layer_models)
        ]

    def _job(self, state: MoAState, config: RunnableConfig) -> tuple[AggregationJob, dict]:
        """The run's job, and the state update of the in-node layer's start."""
        options = current_options()
        start: dict[str, Any] = {}
        layer_runs = False
        if self._proposers and self.layer_controls is not None:
            start, skipped = self.layer_controls.before(state, options)
            if self.last_layer == 1:
                # The first layer's start is the run's start: offsets count from it.
                start["run_started"] = time.time()
            notes = merge_notes(state.get(CONTROLS), start.get(CONTROLS))
            state = {**state, **start, CONTROLS: notes}  # type: ignore[typeddict-item]
            layer_runs = not skipped
        job = AggregationJob(
            state=state,
            config=config,
            options=options,
            settings=self.settings,
            last_layer=self.last_layer,
            aggregator=self.model,
            background=self.background,
        )
        if layer_runs:
            controls = self.layer_controls
            assert controls is not None
            job.layer = _NodeLayer(
                self.last_layer, self._proposers, self.settings, controls, config, job
            )
        return job, start

    def _outcome(self, job: AggregationJob, done: Aggregated, start: dict) -> dict:
        answer = done.answer
        first_token = job.first_token_at
        if job.options.stream_answer and not done.streamed:
            first_token = time.time()
            get_stream_writer()(AnswerToken(AIMessageChunk(content=answer.content)))
        notes = [f"{label}: {describe_error(error)}" for label, error in job.failures]
        latency = elapsed(done.started)
        record = Proposal(
            layer=self.last_layer + 1,
            index=0,
            model=model_label(done.model),
            text=answer.text,
            usage=answer.usage_metadata if isinstance(answer, AIMessage) else None,
            latency_s=latency,
            attempts=done.attempts,
            fallback_from="; ".join(notes) or None,
            **timing(job.state, latency, first_token),
        )
        proposals = job.state.get("proposals", [])
        final = ensemble_answer(answer, proposals, record, self.settings)
        update: dict[str, Any] = {"messages": [final], "aggregation": record}
        if job.new_proposals:
            update["proposals"] = job.new_proposals
        if "run_started" in start:
            update["run_started"] = start["run_started"]
        layer_notes = job.layer.notes if isinstance(job.layer, _NodeLayer) else {}
        controls = merge_notes(start.get(CONTROLS), layer_notes)
        if controls:
            update[CONTROLS] = controls
        return update

    def invoke(self, state: MoAState, config: RunnableConfig) -> dict:
        """Aggregate (sync path)."""
        job, start = self._job(state, config)
        return self._outcome(job, self.settings.strategy.aggregate(job), start)

    async def ainvoke(self, state: MoAState, config: RunnableConfig) -> dict:
        """Aggregate (async path)."""
        job, start = self._job(state, config)
        return self._outcome(job, await self.settings.strategy.aaggregate(job), start)
