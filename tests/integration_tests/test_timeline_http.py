"""Per-call start/end offsets over real HTTP, with simulated latencies.

Every proposal and the aggregator's record carry ``started_s``/``finished_s``
(seconds from the run's start, which the first layer's ``start`` node writes as
``run_started``), and a streamed answer's aggregator record ``first_token_s``.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from langchain_core.messages import BaseMessageChunk
from langchain_openai import ChatOpenAI
from rich.console import Console

from langchain_moa import MoAChatModel
from langchain_moa.testing import ModelBehavior, OpenAISimulator
from langchain_moa.timeline import render_timeline

LATENCIES = {"tl-fast": 0.05, "tl-mid": 0.12, "tl-slow": 0.25}
AGGREGATOR_FIRST_TOKEN = 0.1
ANSWER = "tl-agg read 3 references [tl-fast, tl-mid, tl-slow] and answers: Why is the sky blue?"
TOLERANCE = 0.01  # offsets and latencies are rounded to 0.1 ms and measured apart


def chat(sim: OpenAISimulator, model: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=sim.base_url, api_key="sim-key", model=model, max_retries=0)


@pytest.fixture
def llm(openai_simulator: OpenAISimulator) -> MoAChatModel:
    for name, latency in LATENCIES.items():
        openai_simulator.set_behavior(name, ModelBehavior(first_token_latency=latency))
    openai_simulator.set_behavior(
        "tl-agg", ModelBehavior(first_token_latency=AGGREGATOR_FIRST_TOKEN, token_delay=0.005)
    )
    return MoAChatModel(
        proposers=[chat(openai_simulator, name) for name in LATENCIES],
        aggregator=chat(openai_simulator, "tl-agg"),
        layers=3,
    )


def joined(chunks: list[BaseMessageChunk]) -> BaseMessageChunk:
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    return total


def assert_consistent(metadata: dict[str, Any]) -> None:
    """0 <= started <= finished; layers in order; the aggregator after the last layer."""
    layers = metadata["proposals"]
    aggregator = metadata["aggregator"]
    for record in [*(p for layer in layers for p in layer), aggregator]:
        assert 0 <= record["started_s"] <= record["finished_s"], record
        span = record["finished_s"] - record["started_s"]
        assert span == pytest.approx(record["latency_s"], abs=TOLERANCE), record
    for earlier, later in itertools.pairwise(layers):
        assert max(p["finished_s"] for p in earlier) <= min(p["started_s"] for p in later)
    assert max(p["finished_s"] for p in layers[-1]) <= aggregator["started_s"]
    # Each call took at least its simulated latency; the slowest sets each layer's pace.
    for layer in layers:
        for record in layer:
            assert record["finished_s"] - record["started_s"] >= LATENCIES[record["model"]]
        assert max(layer, key=lambda p: p["finished_s"])["model"] == "tl-slow"
    critical = 2 * LATENCIES["tl-slow"] + AGGREGATOR_FIRST_TOKEN
    assert aggregator["finished_s"] >= critical


def test_invoke_records_consistent_offsets(llm: MoAChatModel) -> None:
    answer = llm.invoke("Why is the sky blue?")
    assert_consistent(answer.response_metadata)
    assert answer.response_metadata["aggregator"]["first_token_s"] is None


async def test_ainvoke_records_consistent_offsets(llm: MoAChatModel) -> None:
    answer = await llm.ainvoke("Why is the sky blue?")
    assert_consistent(answer.response_metadata)


def check_first_token(metadata: dict[str, Any]) -> None:
    aggregator = metadata["aggregator"]
    first = aggregator["first_token_s"]
    assert aggregator["started_s"] + AGGREGATOR_FIRST_TOKEN <= first + TOLERANCE
    assert first <= aggregator["finished_s"]


def test_stream_records_the_first_token(llm: MoAChatModel) -> None:
    started = time.perf_counter()
    first_seen: list[float] = []
    chunks = []
    for chunk in llm.stream("Why is the sky blue?"):
        if chunk.content and not first_seen:
            first_seen.append(time.perf_counter() - started)
        chunks.append(chunk)
    assert joined(chunks).content == ANSWER
    metadata = joined(chunks).response_metadata
    assert_consistent(metadata)
    check_first_token(metadata)
    # The recorded first token is when the caller got it (the run starts a bit after the call).
    assert metadata["aggregator"]["first_token_s"] <= first_seen[0] + TOLERANCE


async def test_astream_records_the_first_token(llm: MoAChatModel) -> None:
    chunks = [chunk async for chunk in llm.astream("Why is the sky blue?")]
    assert joined(chunks).content == ANSWER
    metadata = joined(chunks).response_metadata
    assert_consistent(metadata)
    check_first_token(metadata)


def test_the_graph_state_carries_the_run_start(llm: MoAChatModel) -> None:
    before = time.time()
    state = llm.graph.invoke({"messages": [("user", "q")]})
    assert before <= state["run_started"] <= time.time()
    assert state["aggregation"].started_s >= max(p.finished_s for p in state["proposals"])


def test_progress_events_carry_the_offsets(llm: MoAChatModel) -> None:
    from langchain_core.callbacks import BaseCallbackHandler

    seen: list[dict[str, Any]] = []

    class Collect(BaseCallbackHandler):
        def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
            if data.get("kind") == "proposer_finished":
                seen.append(data["proposal"])

    llm.invoke("q", config={"callbacks": [Collect()]})
    assert len(seen) == 6
    assert all(p["started_s"] <= p["finished_s"] for p in seen)


def test_a_cut_straggler_ends_at_the_layer_deadline(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("cut-slow", ModelBehavior(first_token_latency=5.0))
    deadline = 0.3
    llm = MoAChatModel(
        proposers=[chat(openai_simulator, "cut-a"), chat(openai_simulator, "cut-slow")],
        aggregator=chat(openai_simulator, "cut-agg"),
        layers=2,
        layer_deadline=deadline,
        min_proposers=1,
    )
    answer = llm.invoke("q")
    metadata = answer.response_metadata
    cut = metadata["proposals"][0][1]
    assert cut["error"].startswith("LayerDeadlineError")
    # Cut at the deadline, not when the straggler would answer (5 s); the slack
    # leaves room for a loaded 2-core machine.
    assert deadline - 0.05 <= cut["finished_s"] < deadline + 2.0
    assert cut["finished_s"] <= metadata["aggregator"]["started_s"]
    text = rendered(metadata)
    assert "cut at the layer deadline" in text
    assert "critical path" in text


def rendered(metadata: dict[str, Any]) -> str:
    console = Console(width=140, record=True, no_color=True)
    console.print(render_timeline(metadata))
    return console.export_text()


def test_the_real_metadata_draws_a_chart(llm: MoAChatModel) -> None:
    text = rendered(llm.invoke("q").response_metadata)
    slow_rows = [line for line in text.splitlines() if " tl-slow " in line]
    assert len(slow_rows) == 2
    assert all("critical path" in line for line in slow_rows)
    assert "critical path" in next(line for line in text.splitlines() if " agg " in line)
