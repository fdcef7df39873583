"""Conformance matrix: every setting and capability x every entry point (issue 11).

Rows are the ensemble's settings and capabilities; columns are the ways a user
runs an ensemble. Every cell builds its own ensemble with model names of its own
(``mx-{row}-{entry}-...``, the simulator session is shared), runs it over real
HTTP against the simulator through one small adapter per entry point, and checks
the row's behaviour on what that entry point hands back: the final message (or
parsed output), the streamed chunks and the progress events it exposes.

Columns (``ENTRY_POINTS``): ``invoke``, ``ainvoke``, ``stream``, ``astream``,
``batch`` and ``abatch`` (two questions), a node of a user's ``MessagesState``
graph streamed with ``stream_mode="messages"`` (``node_messages``) or ``"custom"``
(``node_custom``), an async node streamed with both (``anode``),
``astream_events(version="v2")``, ``llm.graph`` as a subgraph (``subgraph``), a
``model_copy()`` made after a first call (``copy_after_use``), a copy made after a
first call that only then gets the row's settings (``copy_with_settings``), and
``invoke`` after ``ainvoke`` on the same ensemble (``sync_after_async``).

Rows (``ROWS``): ``proposer_timeout``, ``layer_deadline`` (+ ``min_proposers``),
``retries``, ``fallback_aggregator``, ``aggregator_timeout``,
``first_token_timeout``, ``max_reference_chars``, ``max_concurrency``, ``usage``,
``progress``, ``tools``, ``structured_output`` (function calling and
``json_schema``), ``cache``, ``inner_settings`` (temperature, max_tokens, stop),
and the errors ``quorum_error`` and ``aggregator_error``.

Combinations that are unsupported by design are listed in ``UNSUPPORTED`` with
the reason, and skipped with it.
"""

from __future__ import annotations

import asyncio
import operator
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import reduce
from typing import Any
from uuid import UUID

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import BaseCallbackHandler, get_usage_metadata_callback
from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from pydantic import BaseModel

from langchain_moa import (
    PROGRESS_EVENT,
    AggregatorFailedError,
    MoAChatModel,
    ProposersFailedError,
)
from langchain_moa.testing import ModelBehavior, OpenAISimulator, RecordedRequest
from langchain_moa.testing.answers import parse_references, prompt_tokens
from tests.simulated_usage import simulator_usage

QUESTIONS = ("Why is the sky blue?", "Why is the sea green?")
"""The question of a call; ``batch``/``abatch`` send both, one per item."""

FAST_RETRY = {"retry_base_delay": 0.01, "retry_max_delay": 0.05}
TIMEOUT = 0.5
"""Every timeout and deadline in the matrix (a hung model never answers)."""
HUNG_BOUND = 6.0
"""Wall-clock bound for a call with a hung model: the timeout plus a generous margin."""

Wrap = Callable[[MoAChatModel], Runnable]


# -- what an entry point hands back --------------------------------------------------


@dataclass
class Outcome:
    """What one call through an entry point gave back.

    Attributes:
        results: ``(question, final AIMessage or parsed output)`` per item.
        chunks: The streamed chunks of the answer (``None``: nothing streamed).
        progress: Progress events by the channel they came through
            (``callbacks``, ``custom`` stream, ``events`` of ``astream_events``).
        custom: Everything the user's graph's ``custom`` stream carried.
        elapsed: Seconds from just before the call to its end.
    """

    results: list[tuple[str, Any]]
    chunks: list[Any] | None = None
    progress: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    custom: list[Any] | None = None
    elapsed: float = 0.0

    @property
    def result(self) -> Any:
        return self.results[0][1]


class ProgressHandler(BaseCallbackHandler):
    """Collects the ``moa_progress`` custom callback events."""

    run_inline = True

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if name == PROGRESS_EVENT:
            with self._lock:
                self.events.append(data)


def combined(chunks: list[Any]) -> Any:
    """A streamed answer: the message chunks summed, or the last parsed output."""
    if chunks and all(isinstance(c, AIMessageChunk) for c in chunks):
        return reduce(operator.add, chunks)
    return chunks[-1]


# -- one adapter per entry point -------------------------------------------------------
# Each takes the ensemble, an optional ``wrap`` building the runnable to call from
# it (tools, schemas), ``arm`` (called just before the measured call: sets the
# faults and marks where the call's requests start) and the call's config.
# ``copy_with_settings`` alone gets an ensemble without the row's settings and
# applies them to a copy made after a first call (``settings``).


def _target(llm: MoAChatModel, wrap: Wrap | None) -> Runnable:
    return wrap(llm) if wrap is not None else llm


def run_invoke(
    llm: MoAChatModel, wrap: Wrap | None, arm: Callable, config: dict, settings: dict
) -> Outcome:
    target = _target(llm, wrap)
    arm()
    return Outcome([(QUESTIONS[0], target.invoke(QUESTIONS[0], config))])


def run_ainvoke(
    llm: MoAChatModel, wrap: Wrap | None, arm: Callable, config: dict, settings: dict
) -> Outcome:
    target = _target(llm, wrap)
    arm()
    return Outcome([(QUESTIONS[0], asyncio.run(target.ainvoke(QUESTIONS[0], config)))])


def run_stream(
    llm: MoAChatModel, wrap: Wrap | None, arm: Callable, config: dict, settings: dict
) -> Outcome:
    target = _target(llm, wrap)
    arm()
    chunks = list(target.stream(QUESTIONS[0], config))
    return Outcome([(QUESTIONS[0], combined(chunks))], chunks=chunks)


def run_astream(
    llm: MoAChatModel, wrap: Wrap | None, arm: Callable, config: dict, settings: dict
) -> Outcome:
    target = _target(llm, wrap)
    arm()

    async def go() -> list[Any]:
        return [chunk async for chunk in target.astream(QUESTIONS[0], config)]

    chunks = asyncio.run(go())
    return Outcome([(QUESTIONS[0], combined(chunks))], chunks=chunks)


def run_batch(
    llm: MoAChatModel, wrap: Wrap | None, arm: Callable, config: dict, settings: dict
) -> Outcome:
    target = _target(llm, wrap)
    arm()
    return Outcome(list(zip(QUESTIONS, target.batch(list(QUESTIONS), config), strict=True)))


def run_abatch(
    llm: MoAChatModel, wrap: Wrap | None, arm: Callable, config: dict, settings: dict
) -> Outcome:
    target = _target(llm, wrap)
    arm()
    results = asyncio.run(target.abatch(list(QUESTIONS), config))
    return Outcome(list(zip(QUESTIONS, results, strict=True)))


class NodeState(MessagesState):
    parsed: Any


def _node_update(output: Any) -> dict:
    return {"messages": [output]} if isinstance(output, BaseMessage) else {"parsed": output}


def user_graph(target: Runnable, *, is_async: bool = False) -> Any:
    """A user's graph whose one node calls the ensemble like any chat model."""

    def answer(state: NodeState) -> dict:
        return _node_update(target.invoke(state["messages"]))

    async def aanswer(state: NodeState) -> dict:
        return _node_update(await target.ainvoke(state["messages"]))

    builder = StateGraph(NodeState)
    builder.add_node("answer", aanswer if is_async else answer)
    builder.add_edge(START, "answer")
    return builder.compile()


def _node_result(state: dict[str, Any]) -> Any:
    return state["parsed"] if "parsed" in state else state["messages"][-1]


def run_node_messages(
    llm: MoAChatModel, wrap: Wrap | None, arm: Callable, config: dict, settings: dict
) -> Outcome:
    graph = user_graph(_target(llm, wrap))
    arm()
    chunks, state = [], None
    for mode, payload in graph.stream(
        {"messages": [HumanMessage(QUESTIONS[0])]}, config, stream_mode=["messages", "values"]
    ):
        if mode == "messages":
            message, metadata = payload
            assert metadata["langgraph_node"] == "answer"
            chunks.append(message)
        else:
            state = payload
    return Outcome([(QUESTIONS[0], _node_result(state))], chunks=chunks)


def run_node_custom(
    llm: MoAChatModel, wrap: Wrap | None, arm: Callable, config: dict, settings: dict
) -> Outcome:
    graph = user_graph(_target(llm, wrap))
    arm()
    custom, state = [], None
    for mode, payload in graph.stream(
        {"messages": [HumanMessage(QUESTIONS[0])]}, config, stream_mode=["custom", "values"]
    ):
        if mode == "custom":
            custom.append(payload)
        else:
            state = payload
    progress = [p["moa_progress"] for p in custom if isinstance(p, dict) and "moa_progress" in p]
    return Outcome(
        [(QUESTIONS[0], _node_result(state))], progress={"custom": progress}, custom=custom
    )


def run_anode(
    llm: MoAChatModel, wrap: Wrap | None, arm: Callable, config: dict, settings: dict
) -> Outcome:
    graph = user_graph(_target(llm, wrap), is_async=True)
    arm()

    async def go() -> list[Any]:
        return [
            item
            async for item in graph.astream(
                {"messages": [HumanMessage(QUESTIONS[0])]},
                config,
                stream_mode=["messages", "custom", "values"],
            )
        ]

    chunks, custom, state = [], [], None
    for mode, payload in asyncio.run(go()):
        if mode == "messages":
            message, metadata = payload
            assert metadata["langgraph_node"] == "answer"
            chunks.append(message)
        elif mode == "custom":
            custom.append(payload)
        else:
            state = payload
    progress = [p["moa_progress"] for p in custom if isinstance(p, dict) and "moa_progress" in p]
    return Outcome(
        [(QUESTIONS[0], _node_result(state))],
        chunks=chunks,
        progress={"custom": progress},
        custom=custom,
    )


def run_astream_events(
    llm: MoAChatModel, wrap: Wrap | None, arm: Callable, config: dict, settings: dict
) -> Outcome:
    target = _target(llm, wrap)
    arm()

    async def go() -> list[dict[str, Any]]:
        return [e async for e in target.astream_events(QUESTIONS[0], config, version="v2")]

    events = asyncio.run(go())
    ensemble_run = next(e["run_id"] for e in events if e["event"] == "on_chat_model_start")
    chunks = [
        e["data"]["chunk"]
        for e in events
        if e["event"] == "on_chat_model_stream" and e["run_id"] == ensemble_run
    ]
    root_end = [e for e in events if not e["parent_ids"] and e["event"].endswith("_end")][-1]
    progress = [
        e["data"] for e in events if e["event"] == "on_custom_event" and e["name"] == PROGRESS_EVENT
    ]
    return Outcome(
        [(QUESTIONS[0], root_end["data"]["output"])], chunks=chunks, progress={"events": progress}
    )


def run_subgraph(
    llm: MoAChatModel, wrap: Wrap | None, arm: Callable, config: dict, settings: dict
) -> Outcome:
    assert wrap is None, "llm.graph takes no per-call tools or schema (see UNSUPPORTED)"
    builder = StateGraph(MessagesState)
    builder.add_node("moa", llm.graph)
    builder.add_edge(START, "moa")
    graph = builder.compile()
    arm()
    custom, state = [], None
    for namespace, mode, payload in graph.stream(
        {"messages": [HumanMessage(QUESTIONS[0])]},
        config,
        stream_mode=["custom", "values"],
        subgraphs=True,
    ):
        if mode == "custom":
            custom.append(payload)
        elif not namespace:
            state = payload
    return Outcome(
        [(QUESTIONS[0], state["messages"][-1])],
        progress={"custom": [p for p in custom if isinstance(p, dict) and "kind" in p]},
        custom=custom,
    )


def run_copy_after_use(
    llm: MoAChatModel, wrap: Wrap | None, arm: Callable, config: dict, settings: dict
) -> Outcome:
    _target(llm, wrap).invoke("Warm up.")
    target = _target(llm.model_copy(), wrap)
    arm()
    return Outcome([(QUESTIONS[0], target.invoke(QUESTIONS[0], config))])


def run_copy_with_settings(
    llm: MoAChatModel, wrap: Wrap | None, arm: Callable, config: dict, settings: dict
) -> Outcome:
    _target(llm, wrap).invoke("Warm up.")
    target = _target(llm.model_copy(update=settings), wrap)
    arm()
    return Outcome([(QUESTIONS[0], target.invoke(QUESTIONS[0], config))])


def run_sync_after_async(
    llm: MoAChatModel, wrap: Wrap | None, arm: Callable, config: dict, settings: dict
) -> Outcome:
    target = _target(llm, wrap)
    asyncio.run(target.ainvoke("Warm up."))
    arm()
    return Outcome([(QUESTIONS[0], target.invoke(QUESTIONS[0], config))])


ENTRY_POINTS: dict[str, Callable[..., Outcome]] = {
    "invoke": run_invoke,
    "ainvoke": run_ainvoke,
    "stream": run_stream,
    "astream": run_astream,
    "batch": run_batch,
    "abatch": run_abatch,
    "node_messages": run_node_messages,
    "node_custom": run_node_custom,
    "anode": run_anode,
    "astream_events": run_astream_events,
    "subgraph": run_subgraph,
    "copy_after_use": run_copy_after_use,
    "copy_with_settings": run_copy_with_settings,
    "sync_after_async": run_sync_after_async,
}

PROGRESS_CHANNELS = {
    "node_custom": {"callbacks", "custom"},
    "anode": {"callbacks", "custom"},
    "astream_events": {"callbacks", "events"},
    # llm.graph writes progress to LangGraph's custom stream, as the event dicts.
    "subgraph": {"custom"},
}
"""Where each entry point exposes progress; every other one: the callbacks."""


# -- one cell --------------------------------------------------------------------------


@dataclass
class Cell:
    sim: OpenAISimulator
    row: str
    entry: str
    mark: int = 0
    started: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def name(self, role: str) -> str:
        return f"mx-{self.row}-{self.entry}-{role}"

    def names(self, n: int) -> list[str]:
        return [self.name(f"p{i}") for i in range(n)]

    def team(self, n: int = 3, layers: int = 2, **settings: Any) -> MoAChatModel:
        """The cell's ensemble with the row's ``settings``.

        For ``copy_with_settings`` the ensemble is built without them; the entry
        point applies them to a copy made after a first call.
        """
        settings = {**FAST_RETRY, **settings}
        self.settings = settings if self.entry == "copy_with_settings" else {}
        return MoAChatModel(
            proposers=[self.sim.chat_model(name) for name in self.names(n)],
            aggregator=self.sim.chat_model(self.name("agg")),
            layers=layers,
            **({} if self.entry == "copy_with_settings" else settings),
        )

    def call(
        self,
        llm: MoAChatModel,
        *,
        wrap: Wrap | None = None,
        arm: Callable[[], None] | None = None,
        listen: bool = False,
        tokens: bool = True,
    ) -> Outcome:
        """Run the cell's entry point once, with its common checks."""
        handler = ProgressHandler() if listen else None
        config: RunnableConfig = {"callbacks": [handler]} if handler else {}

        def armed() -> None:
            if arm is not None:
                arm()
            self.mark = len(self.sim.requests)
            self.started = time.perf_counter()

        outcome = ENTRY_POINTS[self.entry](llm, wrap, armed, config, self.settings)
        outcome.elapsed = time.perf_counter() - self.started
        if handler is not None and self.entry != "subgraph":
            outcome.progress["callbacks"] = handler.events
        check_common(self.entry, outcome, tokens=tokens)
        return outcome

    def requests(self, role: str | None = None) -> list[RecordedRequest]:
        """The requests of the measured call (for one model, if given)."""
        made = self.sim.requests[self.mark :]
        return made if role is None else [r for r in made if r.model == self.name(role)]

    def proposer_requests(self, n: int = 3) -> list[RecordedRequest]:
        names = set(self.names(n))
        return [r for r in self.sim.requests[self.mark :] if r.model in names]

    def answer(self, question: str, proposers: list[int], by: str = "agg") -> str:
        read = ", ".join(self.name(f"p{i}") for i in proposers)
        return f"{self.name(by)} read {len(proposers)} references [{read}] and answers: {question}"


def check_common(entry: str, outcome: Outcome, *, tokens: bool = True) -> None:
    """What must hold on an entry point whatever the row.

    ``tokens``: a streamed answer arrives token by token (not when it is a cache hit).
    """
    assert len(outcome.results) == (2 if entry in ("batch", "abatch") else 1)
    result = outcome.result
    if outcome.chunks is not None and isinstance(result, BaseMessage):
        # The streamed tokens are the answer, once (no repeat of the whole message),
        # token by token.
        assert "".join(c.content for c in outcome.chunks) == result.content
        if result.content and tokens:
            assert len([c for c in outcome.chunks if c.content]) > 1
    if entry in ("node_custom", "anode"):
        # The user's custom stream carries progress, and nothing internal.
        assert all(isinstance(p, dict) and set(p) == {"moa_progress"} for p in outcome.custom)


def proposals(result: Any, layer: int = 0) -> list[dict[str, Any]]:
    return result.response_metadata["proposals"][layer]


# -- rows --------------------------------------------------------------------------------


def row_proposer_timeout(cell: Cell) -> None:
    llm = cell.team(proposer_timeout=TIMEOUT, max_retries=0)
    out = cell.call(
        llm, arm=lambda: cell.sim.set_behavior(cell.name("p1"), ModelBehavior(hang=True))
    )
    assert out.elapsed < HUNG_BOUND
    for question, result in out.results:
        assert proposals(result)[1]["error"] == "ProposerTimeoutError: no answer within 0.5s"
        assert result.content == cell.answer(question, [0, 2])
        assert result.response_metadata["degraded"] is True
        assert result.response_metadata["failed_proposers"] == 1


def row_layer_deadline(cell: Cell) -> None:
    llm = cell.team(layer_deadline=TIMEOUT, min_proposers=2, max_retries=0)
    out = cell.call(
        llm, arm=lambda: cell.sim.set_behavior(cell.name("p2"), ModelBehavior(hang=True))
    )
    assert out.elapsed < HUNG_BOUND
    for question, result in out.results:
        cut = proposals(result)[2]
        assert cut["error"].startswith("LayerDeadlineError: cut at the layer deadline (0.5s)")
        assert [p["error"] for p in proposals(result)[:2]] == [None, None]
        assert result.content == cell.answer(question, [0, 1])


def row_retries(cell: Cell) -> None:
    llm = cell.team(max_retries=1)

    def arm() -> None:
        for role in ("p0", "agg"):
            cell.sim.set_behavior(cell.name(role), ModelBehavior(fail_first=1))

    out = cell.call(llm, arm=arm)
    for role, records in (
        ("p0", [proposals(result)[0] for _, result in out.results]),
        ("agg", [result.response_metadata["aggregator"] for _, result in out.results]),
    ):
        assert [r["error"] for r in records] == [None] * len(records)
        attempts = sorted(r["attempts"] for r in records)
        # One request failed (500) and was retried once; in a batch, the other
        # item's first request already succeeds.
        assert attempts == [1] * (len(records) - 1) + [2], role
        assert len(cell.requests(role)) == sum(attempts), role
    for question, result in out.results:
        assert result.content == cell.answer(question, [0, 1, 2])
        assert result.response_metadata["degraded"] is False


def row_fallback_aggregator(cell: Cell) -> None:
    llm = cell.team(max_retries=1, fallback_aggregator=cell.sim.chat_model(cell.name("fb")))
    out = cell.call(
        llm,
        arm=lambda: cell.sim.set_behavior(cell.name("agg"), ModelBehavior(error_status=503)),
    )
    assert len(cell.requests("agg")) == 2 * len(out.results)  # retried, then handed over
    for question, result in out.results:
        assert result.content == cell.answer(question, [0, 1, 2], by="fb")
        aggregator = result.response_metadata["aggregator"]
        assert aggregator["model"] == cell.name("fb")
        assert aggregator["fallback_from"].startswith(f"{cell.name('agg')}: ")
        assert "Error code: 503" in aggregator["fallback_from"]
        assert result.response_metadata["degraded"] is True


def row_aggregator_timeout(cell: Cell) -> None:
    llm = cell.team(
        aggregator_timeout=TIMEOUT,
        max_retries=0,
        fallback_aggregator=cell.sim.chat_model(cell.name("fb")),
    )
    out = cell.call(
        llm, arm=lambda: cell.sim.set_behavior(cell.name("agg"), ModelBehavior(hang=True))
    )
    assert out.elapsed < HUNG_BOUND
    for question, result in out.results:
        assert result.content == cell.answer(question, [0, 1, 2], by="fb")
        aggregator = result.response_metadata["aggregator"]
        assert aggregator["fallback_from"] == (
            f"{cell.name('agg')}: AggregatorTimeoutError: no answer within 0.5s"
        )
        assert result.response_metadata["degraded"] is True


def row_max_reference_chars(cell: Cell) -> None:
    budget = 90
    out = cell.call(cell.team(layers=3, max_reference_chars=budget))
    # Every agent that reads references: layer 2's proposers and the aggregator.
    sent = [r for r in cell.requests() if parse_references(r.body["messages"][0]["content"])]
    assert len(sent) == 4 * len(out.results)
    assert len(cell.requests("agg")) == len(out.results)
    for request in sent:
        references = parse_references(request.body["messages"][0]["content"])
        assert len(references) == 3
        kept = []
        for reference in references:
            cut = re.fullmatch(r"(.*)\[\.\.\. truncated (\d+) characters\]", reference, re.S)
            assert cut, reference
            kept.append(cut.group(1))
        assert sum(len(k) for k in kept) <= budget
    for question, result in out.results:
        assert result.content.startswith(f"{cell.name('agg')} read 3 references [")
        assert result.content.endswith(f"and answers: {question}")
        assert all(p["error"] is None for p in proposals(result))


def _quiet(sim: OpenAISimulator) -> None:
    """Wait until no request is in flight (hung ones of earlier cells are let go)."""
    deadline = time.monotonic() + 5.0
    sim.reset_peak_in_flight()
    while sim.peak_in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
        sim.reset_peak_in_flight()


def row_max_concurrency(cell: Cell) -> None:
    limit, latency = 2, 0.1
    llm = cell.team(n=4, max_concurrency=limit)
    residual = 0

    def arm() -> None:
        nonlocal residual
        for name in cell.names(4):
            cell.sim.set_behavior(name, ModelBehavior(first_token_latency=latency))
        _quiet(cell.sim)
        residual = cell.sim.peak_in_flight

    out = cell.call(llm, arm=arm)
    assert cell.sim.peak_in_flight <= limit + residual
    # Four proposers, two at a time: at least two rounds.
    assert out.elapsed >= 2 * latency
    for question, result in out.results:
        assert result.content == cell.answer(question, [0, 1, 2, 3])


def row_usage(cell: Cell) -> None:
    with get_usage_metadata_callback() as counter:
        # Count the measured call only, not a warm-up call before it.
        out = cell.call(cell.team(layers=3), arm=counter.usage_metadata.clear)
    fields = ("input_tokens", "output_tokens", "total_tokens")
    for _, result in out.results:
        meta = result.response_metadata
        records = [p for layer in meta["proposals"] for p in layer] + [meta["aggregator"]]
        assert len(records) == 2 * 3 + 1
        expected = {f: sum(r["usage"][f] for r in records) for f in fields}
        assert {f: result.usage_metadata[f] for f in fields} == expected
    # Every inner call is counted once: the prompt tokens are those the simulator received.
    sent = cell.requests()
    assert len(sent) == 7 * len(out.results)
    received = sum(prompt_tokens(r.body["messages"]) for r in sent)
    assert sum(result.usage_metadata["input_tokens"] for _, result in out.results) == received
    # And the completion tokens those the simulator reported, call by call.
    answered = simulator_usage(sent)["output_tokens"]
    assert sum(result.usage_metadata["output_tokens"] for _, result in out.results) == answered
    for _, result in out.results:
        meta = result.response_metadata
        first_layer = [p["usage"]["output_tokens"] for p in meta["proposals"][0]]
        assert first_layer == [2 + 5] * 3  # "<proposer> answers: <five-word question>"
    # A usage callback counts every token once (the ensemble's run, not its inner runs too).
    counted = sum(usage["total_tokens"] for usage in counter.usage_metadata.values())
    assert counted == sum(result.usage_metadata["total_tokens"] for _, result in out.results)
    if out.chunks is not None:
        # The chunks carry the summed usage once, not the aggregator's on top.
        streamed = [c.usage_metadata for c in out.chunks if c.usage_metadata]
        assert len(streamed) == 1
        assert streamed[0]["total_tokens"] == out.result.usage_metadata["total_tokens"]


def row_progress(cell: Cell) -> None:
    llm = cell.team(max_retries=0)

    def arm() -> None:
        cell.sim.set_behavior(cell.name("p0"), ModelBehavior(first_token_latency=0.05))
        cell.sim.set_behavior(cell.name("p1"), ModelBehavior(error_status=500))

    out = cell.call(llm, arm=arm, listen=True)
    items = len(out.results)
    expected = PROGRESS_CHANNELS.get(cell.entry, {"callbacks"})
    assert set(out.progress) == expected
    for channel, events in out.progress.items():
        kinds = [e["kind"] for e in events]
        assert kinds.count("layer_started") == items, channel
        assert kinds.count("proposer_finished") == 3 * items, channel
        assert kinds.count("layer_finished") == items, channel
        assert kinds.count("aggregation_started") == items, channel
        if items == 1:
            assert kinds[0] == "layer_started"
            assert kinds[-2:] == ["layer_finished", "aggregation_started"]
        finished = [e["proposal"] for e in events if e["kind"] == "proposer_finished"]
        failed = [p for p in finished if p["error"]]
        assert [p["model"] for p in failed] == [cell.name("p1")] * items, channel
        assert all("Error code: 500" in p["error"] for p in failed)
        # p0 waits 0.05 s before answering (a busy machine may add a lot).
        slow = [p["latency_s"] for p in finished if p["model"] == cell.name("p0")]
        assert len(slow) == items
        assert all(0.05 <= latency < 30 for latency in slow), channel
        ok = [p for p in finished if not p["error"]]
        # Both questions are five words: 5 in, "<proposer> answers: <question>" out.
        assert [p["usage"]["total_tokens"] for p in ok] == [5 + 7] * 2 * items, channel
        layer_finished = {"kind": "layer_finished", "layer": 1, "succeeded": 2, "failed": 1}
        assert events.count(layer_finished) == items
    for question, result in out.results:
        assert result.content == cell.answer(question, [0, 2])


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"Sunny in {city}"


def row_tools(cell: Cell) -> None:
    out = cell.call(cell.team(), wrap=lambda llm: llm.bind_tools([get_weather]))
    for _, result in out.results:
        assert [call["name"] for call in result.tool_calls] == ["get_weather"]
        assert set(result.tool_calls[0]["args"]) == {"city"}
        assert result.response_metadata["proposals"]
    proposer_requests = cell.proposer_requests()
    assert len(proposer_requests) == 3 * len(out.results)
    for request in proposer_requests:
        assert request.body["tool_choice"] == "none"
        assert [t["function"]["name"] for t in request.body["tools"]] == ["get_weather"]
    for request in cell.requests("agg"):
        assert request.body.get("tool_choice", "auto") == "auto"
        assert [t["function"]["name"] for t in request.body["tools"]] == ["get_weather"]


class Weather(BaseModel):
    """The weather in a city."""

    city: str
    sunny: bool


def row_structured_output(cell: Cell) -> None:
    out = cell.call(cell.team(), wrap=lambda llm: llm.with_structured_output(Weather))
    for _, result in out.results:
        assert isinstance(result, Weather)
    for request in cell.proposer_requests():
        assert request.body.get("tool_choice") in (None, "none")
        assert "response_format" not in request.body
    sent = cell.requests("agg")
    assert len(sent) == len(out.results)
    for request in sent:
        assert [t["function"]["name"] for t in request.body["tools"]] == ["Weather"]
        assert request.body["tool_choice"] not in (None, "none", "auto")


def row_structured_json_schema(cell: Cell) -> None:
    wrap = lambda llm: llm.with_structured_output(Weather, method="json_schema")  # noqa: E731
    out = cell.call(cell.team(), wrap=wrap)
    for _, result in out.results:
        assert isinstance(result, Weather)
    for request in cell.proposer_requests():
        assert "response_format" not in request.body
    sent = cell.requests("agg")
    assert len(sent) == len(out.results)
    assert all(r.body["response_format"]["type"] == "json_schema" for r in sent)


def row_cache(cell: Cell) -> None:
    llm = cell.team(cache=InMemoryCache())
    first = cell.call(llm)
    assert len(cell.requests()) == 4 * len(first.results)
    # A hit is the whole answer at once, so a messages stream shows it in one piece.
    second = cell.call(llm, tokens=False)
    assert cell.requests() == [], "the second identical call reached a provider"
    assert [r.content for _, r in second.results] == [r.content for _, r in first.results]
    for question, result in second.results:
        assert result.content == cell.answer(question, [0, 1, 2])


def row_quorum_error(cell: Cell) -> None:
    llm = cell.team(min_proposers=2, max_retries=0)

    def arm() -> None:
        for role in ("p0", "p1"):
            cell.sim.set_behavior(cell.name(role), ModelBehavior(error_status=500))

    with pytest.raises(ProposersFailedError) as caught:
        cell.call(llm, arm=arm)
    assert caught.value.layer == 1
    assert caught.value.required == 2
    assert sorted(p.model for p in caught.value.failures) == [cell.name("p0"), cell.name("p1")]
    assert "Error code: 500" in str(caught.value)
    assert cell.requests("agg") == []


def row_aggregator_error(cell: Cell) -> None:
    llm = cell.team(max_retries=0)
    with pytest.raises(AggregatorFailedError) as caught:
        cell.call(
            llm,
            arm=lambda: cell.sim.set_behavior(cell.name("agg"), ModelBehavior(error_status=503)),
        )
    assert caught.value.model == cell.name("agg")
    assert "Error code: 503" in str(caught.value)
    assert sorted(p.model for p in caught.value.proposals) == cell.names(3)


def row_first_token_timeout(cell: Cell) -> None:
    llm = cell.team(
        aggregator_first_token_timeout=TIMEOUT,
        max_retries=0,
        fallback_aggregator=cell.sim.chat_model(cell.name("fb")),
    )
    out = cell.call(
        llm, arm=lambda: cell.sim.set_behavior(cell.name("agg"), ModelBehavior(hang=True))
    )
    assert out.elapsed < HUNG_BOUND
    assert all(r.body.get("stream") for r in cell.requests("agg"))
    for question, result in out.results:
        assert result.content == cell.answer(question, [0, 1, 2], by="fb")
        assert result.response_metadata["aggregator"]["fallback_from"] == (
            f"{cell.name('agg')}: AggregatorTimeoutError: no first token within 0.5s"
        )


def row_inner_settings(cell: Cell) -> None:
    llm = cell.team(temperature=0.25, max_tokens=64, stop=["STOP-HERE"])
    out = cell.call(llm)
    sent = cell.requests()
    assert len(sent) == 4 * len(out.results)
    for request in sent:
        assert request.body["temperature"] == 0.25
        assert request.body.get("max_completion_tokens", request.body.get("max_tokens")) == 64
        stop = request.body.get("stop")
        assert stop == (["STOP-HERE"] if request.model == cell.name("agg") else None)
    for question, result in out.results:
        assert result.content == cell.answer(question, [0, 1, 2])


ROWS: dict[str, Callable[[Cell], None]] = {
    "proposer_timeout": row_proposer_timeout,
    "layer_deadline": row_layer_deadline,
    "retries": row_retries,
    "fallback_aggregator": row_fallback_aggregator,
    "aggregator_timeout": row_aggregator_timeout,
    "max_reference_chars": row_max_reference_chars,
    "max_concurrency": row_max_concurrency,
    "usage": row_usage,
    "progress": row_progress,
    "tools": row_tools,
    "structured_output": row_structured_output,
    "structured_json_schema": row_structured_json_schema,
    "cache": row_cache,
    "quorum_error": row_quorum_error,
    "aggregator_error": row_aggregator_error,
    "first_token_timeout": row_first_token_timeout,
    "inner_settings": row_inner_settings,
}

_NO_STREAM_CACHE = (
    "LangChain's BaseChatModel.stream/astream never consult the LLM cache (the same for "
    "every chat model); invoke, batch and a graph node's invoke do"
)
_GRAPH_PER_CALL = (
    "llm.graph has no per-call arguments: bind tools or a schema to the chat model "
    "(MoAChatModel.bind_tools / with_structured_output) and call it from a node"
)
_NOT_STREAMED = (
    "aggregator_first_token_timeout bounds a streamed aggregator only; this entry point "
    "does not stream the answer (aggregator_timeout bounds it instead)"
)
UNSUPPORTED: dict[tuple[str, str], str] = {
    **{
        ("first_token_timeout", entry): _NOT_STREAMED
        for entry in (
            "invoke",
            "ainvoke",
            "batch",
            "abatch",
            "node_custom",
            "subgraph",
            "copy_after_use",
            "copy_with_settings",
            "sync_after_async",
        )
    },
    ("cache", "stream"): _NO_STREAM_CACHE,
    ("cache", "astream"): _NO_STREAM_CACHE,
    ("cache", "astream_events"): _NO_STREAM_CACHE + " (astream_events runs astream)",
    ("cache", "subgraph"): (
        "llm.graph is the engine under the chat model; the LLM cache belongs to "
        "MoAChatModel.invoke, so a graph run always calls the providers"
    ),
    ("tools", "subgraph"): _GRAPH_PER_CALL,
    ("structured_output", "subgraph"): _GRAPH_PER_CALL,
    ("structured_json_schema", "subgraph"): _GRAPH_PER_CALL,
}
"""(row, entry point) combinations unsupported by design, with the reason."""

XFAIL: dict[tuple[str, str], str] = {}
"""(row, entry point) cells that reveal a known bug (strict xfail)."""


def _cells() -> list[Any]:
    cells = []
    for row in ROWS:
        for entry in ENTRY_POINTS:
            marks = []
            if (row, entry) in UNSUPPORTED:
                marks.append(pytest.mark.skip(reason=f"unsupported: {UNSUPPORTED[row, entry]}"))
            elif (row, entry) in XFAIL:
                marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[row, entry]))
            cells.append(pytest.param(row, entry, id=f"{row}-{entry}", marks=marks))
    return cells


@pytest.mark.parametrize(("row", "entry"), _cells())
def test_matrix(openai_simulator: OpenAISimulator, row: str, entry: str) -> None:
    ROWS[row](Cell(openai_simulator, row, entry))
