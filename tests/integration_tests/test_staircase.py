"""Staircase aggregation over real HTTP, shown by what each stair read and wrote.

The proposers stream slowly and the aggregator is quick, so the aggregator
climbs several stairs while the proposals are still being written. Each stair's
answer from the simulator says what it read (``"agg read 3 references [p0 (7
words, unfinished), ...] continuing an answer of 40 words and answers: ..."``),
and a stair's cap is larger than that answer, so the final answer is those
notes one after another. No test bounds a time: timing targets are in the
benchmark (``python -m benchmarks --only strategies``).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import operator
import re
from dataclasses import dataclass
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tracers.base import BaseTracer
from langchain_core.tracers.schemas import Run
from langchain_openai import ChatOpenAI
from langgraph.graph import START, MessagesState, StateGraph
from pydantic import BaseModel

from langchain_moa import MoAChatModel, ProposersFailedError, Staircase
from langchain_moa.prompts import CONTINUATION_PROMPT, UNFINISHED_MARKER
from langchain_moa.testing import ModelBehavior, OpenAISimulator
from langchain_moa.testing.answers import parse_references

PROPOSERS = 3
QUESTION = "Why is the sky blue? " + " ".join(f"w{i}" for i in range(26))
QUESTION_WORDS = len(QUESTION.split())
SLOW = ModelBehavior(first_token_latency=0.05, token_delay=0.06)
NOTE = re.compile(
    r"(?P<model>\S+) read (?P<n>\d+) references \[(?P<refs>[^\]]*)\]"
    r"(?: continuing an answer of (?P<answered>\d+) words)? and answers: "
)


def chat(sim: OpenAISimulator, model: str) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=sim.base_url, api_key="sim", model=model, max_retries=0, stream_usage=True
    )


def ensemble(
    sim: OpenAISimulator,
    tag: str,
    *,
    strategy: Staircase | None = None,
    proposer: ModelBehavior = SLOW,
    **kwargs: Any,
) -> MoAChatModel:
    for i in range(PROPOSERS):
        sim.set_behavior(f"{tag}-p{i}", proposer)
    return MoAChatModel(
        proposers=[chat(sim, f"{tag}-p{i}") for i in range(PROPOSERS)],
        aggregator=chat(sim, f"{tag}-agg"),
        layers=kwargs.pop("layers", 2),
        aggregation=strategy or Staircase(chunk_tokens=4, stair_tokens=200),
        **kwargs,
    )


@dataclass
class Stair:
    """What one stair said it read: its references' lengths (words) and the answer so far."""

    lengths: list[int]
    unfinished: list[bool]
    answered: int | None
    start: int


def stairs_in(answer: str) -> list[Stair]:
    """The stairs of an answer made of the simulator's notes, in order."""
    stairs = []
    for match in NOTE.finditer(answer):
        refs = re.findall(r"\S+ \((\d+) words(, unfinished)?\)", match["refs"])
        stairs.append(
            Stair(
                lengths=[int(n) for n, _ in refs],
                unfinished=[bool(flag) for _, flag in refs],
                answered=int(match["answered"]) if match["answered"] else None,
                start=match.start(),
            )
        )
    return stairs


def check_stairs(answer: str, metadata: dict[str, Any], proposer_words: int) -> list[Stair]:
    """The stairs read growing references and continued exactly the answer so far."""
    stairs = stairs_in(answer)
    recorded = metadata["staircase"]["stairs"]
    assert len(stairs) == len(recorded) >= 2, answer
    first, last = stairs[0], stairs[-1]
    assert first.answered is None
    assert any(first.unfinished)
    assert not any(last.unfinished)
    assert last.lengths == [proposer_words] * PROPOSERS
    for before, after in itertools.pairwise(stairs):
        # Every reference only grows, and each stair continues the words before it.
        assert all(b <= a for b, a in zip(before.lengths, after.lengths, strict=True))
        assert after.answered == len(answer[: after.start].split())
    assert sum(last.lengths) > sum(first.lengths)
    assert [s["final"] for s in recorded] == [False] * (len(recorded) - 1) + [True]
    return stairs


def stair_requests(sim: OpenAISimulator, model: str) -> list[tuple[list[str], str | None]]:
    """Each stair's references and quoted answer so far, as sent over HTTP."""
    seen = []
    for request in sim.requests_for(model):
        system = request.body["messages"][0]["content"]
        quoted = None
        if CONTINUATION_PROMPT in system:
            system, block = system.split("\n\n" + CONTINUATION_PROMPT, 1)
            quoted = block.split("<response-so-far>\n", 1)[1].rsplit("\n</response-so-far>", 1)[0]
        seen.append((parse_references(system), quoted))
    return seen


def joined(chunks: list[Any]) -> Any:
    return functools.reduce(operator.add, chunks)


# -- invoke, stream and their async twins ----------------------------------------------


@pytest.mark.parametrize("how", ["invoke", "stream", "ainvoke", "astream"])
def test_stairs_read_growing_references_and_continue_their_own_answer(
    openai_simulator: OpenAISimulator, how: str
) -> None:
    tag = f"st-{how}"
    llm = ensemble(openai_simulator, tag)
    if how == "invoke":
        result = llm.invoke(QUESTION)
    elif how == "ainvoke":
        result = asyncio.run(llm.ainvoke(QUESTION))
    elif how == "stream":
        chunks = list(llm.stream(QUESTION))
        result = joined(chunks)
        assert sum(bool(c.content) for c in chunks) > 2  # token by token, not in one piece
    else:

        async def collect() -> list[Any]:
            return [c async for c in llm.astream(QUESTION)]

        chunks = asyncio.run(collect())
        result = joined(chunks)
        assert sum(bool(c.content) for c in chunks) > 2

    metadata = result.response_metadata
    stairs = check_stairs(result.content, metadata, proposer_words=QUESTION_WORDS + 2)
    assert all(s.lengths for s in stairs)

    # Over HTTP: stair k > 1 quotes exactly the answer the caller had by then, and
    # an unfinished proposal is marked as such.
    sent = stair_requests(openai_simulator, f"{tag}-agg")
    assert len(sent) == len(stairs)
    assert sent[0][1] is None
    quoted = [q for _, q in sent[1:]]
    assert all(q and result.content.startswith(q) for q in quoted)
    assert [len(q) for q in quoted] == sorted({len(q) for q in quoted})  # strictly growing
    assert any(r.endswith(UNFINISHED_MARKER) for r in sent[0][0])
    assert not any(r.endswith(UNFINISHED_MARKER) for r in sent[-1][0])

    # The record: every proposal, every stair, the usage of every call.
    (layer,) = metadata["proposals"]
    assert [p["model"] for p in layer] == [f"{tag}-p{i}" for i in range(PROPOSERS)]
    # "<proposer> answers: <question>", whatever the stairs read on the way.
    assert [(p["error"], p["usage"]["output_tokens"]) for p in layer] == [
        (None, QUESTION_WORDS + 2)
    ] * PROPOSERS
    aggregator = metadata["aggregator"]
    assert aggregator["text"] == result.content
    assert aggregator["attempts"] == len(stairs)
    proposer_usage = sum(p["usage"]["total_tokens"] for p in layer)
    assert result.usage_metadata["total_tokens"] == (
        proposer_usage + aggregator["usage"]["total_tokens"]
    )
    words = [len(s["references"]) for s in metadata["staircase"]["stairs"]]
    assert words == [PROPOSERS] * len(stairs)
    assert metadata["degraded"] is False


def test_each_stair_is_a_traced_run(openai_simulator: OpenAISimulator) -> None:
    class Names(BaseTracer):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def _persist_run(self, run: Run) -> None:
            pass

        def _start_trace(self, run: Run) -> None:
            super()._start_trace(run)
            if run.run_type == "llm":
                self.names.append(run.name)

    names = Names()
    result = ensemble(openai_simulator, "st-trace").invoke(QUESTION, {"callbacks": [names]})
    count = len(result.response_metadata["staircase"]["stairs"])
    stairs = [n for n in names.names if n.startswith("aggregator")]
    assert stairs == [f"aggregator · stair {k} · st-trace-agg" for k in range(1, count + 1)]
    assert sorted(n for n in names.names if n.startswith("layer")) == [
        f"layer 1 · proposer {i} · st-trace-p{i}" for i in range(PROPOSERS)
    ]


def test_astream_events_and_progress(openai_simulator: OpenAISimulator) -> None:
    llm = ensemble(openai_simulator, "st-events", layers=3)

    async def collect() -> list[dict[str, Any]]:
        return [e async for e in llm.astream_events(QUESTION, version="v2")]

    events = asyncio.run(collect())
    streamed = [e["data"]["chunk"] for e in events if e["event"] == "on_chat_model_stream"]
    (end,) = [e for e in events if e["event"] == "on_chat_model_end"]
    assert len([c for c in streamed if c.content]) > 2
    assert joined(streamed).content == end["data"]["output"].content
    progress = [e["data"] for e in events if e["event"] == "on_custom_event"]
    kinds = [p["kind"] for p in progress]
    # Layer 1 runs as usual; layer 2 streams inside the aggregate node.
    assert kinds.count("layer_started") == 2
    assert kinds.count("proposer_finished") == 2 * PROPOSERS
    assert kinds.count("layer_finished") == 2
    assert kinds.count("aggregation_started") == 1
    assert kinds.index("aggregation_started") < kinds.index(
        "layer_finished", 1 + kinds.index("layer_finished")
    )
    metadata = end["data"]["output"].response_metadata
    assert len(metadata["proposals"]) == 2
    check_stairs(
        end["data"]["output"].content,
        metadata,
        proposer_words=len(f"x read 3 references [a, b, c] and answers: {QUESTION}".split()),
    )


def test_inside_a_langgraph_node_the_messages_stream_shows_the_stairs(
    openai_simulator: OpenAISimulator,
) -> None:
    llm = ensemble(openai_simulator, "st-node")

    def answer(state: MessagesState) -> dict:
        return {"messages": [llm.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("answer", answer)
    builder.add_edge(START, "answer")
    graph = builder.compile()
    chunks, state = [], None
    for mode, payload in graph.stream(
        {"messages": [HumanMessage(QUESTION)]}, stream_mode=["messages", "values"]
    ):
        if mode == "messages":
            chunks.append(payload[0])
        else:
            state = payload
    final = state["messages"][-1]
    assert isinstance(final, AIMessage)
    assert len([c for c in chunks if c.content]) > 2
    assert "".join(c.content for c in chunks) == final.content
    check_stairs(final.content, final.response_metadata, proposer_words=QUESTION_WORDS + 2)


# -- limits, failures and fallbacks ------------------------------------------------------


def test_a_stair_writes_at_most_stair_tokens_then_the_final_stair_the_rest(
    openai_simulator: OpenAISimulator,
) -> None:
    llm = ensemble(openai_simulator, "st-cap", strategy=Staircase(chunk_tokens=4, stair_tokens=3))
    result = llm.invoke(QUESTION)
    stairs = result.response_metadata["staircase"]["stairs"]
    assert len(stairs) >= 2
    assert all(s["tokens"] <= 3 for s in stairs[:-1])
    # The simulator's words end with a space: a capped stair keeps its 3 words.
    capped = result.content.split("st-cap-agg read")[1:-1]
    assert capped
    assert all(piece.split() == ["3"] for piece in capped)
    requests = openai_simulator.requests_for("st-cap-agg")
    assert all(r.body.get("max_completion_tokens") == 3 for r in requests[:-1])
    assert "max_completion_tokens" not in requests[-1].body
    assert result.content.endswith(QUESTION)


def test_the_callers_max_tokens_bounds_the_whole_answer(openai_simulator: OpenAISimulator) -> None:
    llm = ensemble(
        openai_simulator, "st-budget", strategy=Staircase(chunk_tokens=4, stair_tokens=5)
    )
    result = llm.invoke(QUESTION, max_tokens=12)
    assert len(result.content.split()) <= 12
    assert result.response_metadata["aggregator"]["usage"]["output_tokens"] <= 12
    assert len(result.response_metadata["proposals"][0]) == PROPOSERS


def test_stair_wait_starts_without_a_straggler(openai_simulator: OpenAISimulator) -> None:
    llm = ensemble(
        openai_simulator,
        "st-wait",
        strategy=Staircase(chunk_tokens=4, stair_tokens=200, stair_wait=0.1, min_proposers=2),
        proposer_timeout=3,
    )
    openai_simulator.set_behavior("st-wait-p2", ModelBehavior(hang=True))
    result = llm.invoke(QUESTION)
    stairs = stairs_in(result.content)
    assert len(stairs) >= 2
    assert all(len(s.lengths) == 2 for s in stairs)  # the straggler never wrote a word
    assert stairs[-1].lengths == [QUESTION_WORDS + 2] * 2
    layer = result.response_metadata["proposals"][0]
    assert layer[2]["error"].startswith("ProposerTimeoutError")
    assert result.response_metadata["degraded"] is True


def test_a_proposer_that_breaks_off_drops_out_of_later_stairs(
    openai_simulator: OpenAISimulator,
) -> None:
    llm = ensemble(openai_simulator, "st-die")
    openai_simulator.set_behavior(
        "st-die-p1", ModelBehavior(first_token_latency=0.05, token_delay=0.02, die_after_tokens=6)
    )
    result = llm.invoke(QUESTION)
    stairs = stairs_in(result.content)
    assert len(stairs[-1].lengths) == 2
    # Six tokens of "st-die-p1 answers: Why is the sky blue? ..." arrived, then the cut.
    error = result.response_metadata["proposals"][0][1]["error"]
    assert error.startswith("StreamBrokenError: ")
    assert f"after {len('st-die-p1 answers: Why is the sky ')} characters" in error
    assert result.response_metadata["failed_proposers"] == 1


def test_too_few_proposals_fail_the_layer(openai_simulator: OpenAISimulator) -> None:
    llm = ensemble(openai_simulator, "st-quorum", proposer=ModelBehavior(error_status=400))
    with pytest.raises(ProposersFailedError) as failed:
        llm.invoke(QUESTION)
    assert failed.value.layer == 1
    assert openai_simulator.requests_for("st-quorum-agg") == []


def test_the_fallback_aggregator_writes_the_stairs(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("st-fb-agg", ModelBehavior(error_status=500))
    llm = ensemble(
        openai_simulator,
        "st-fb",
        fallback_aggregator=chat(openai_simulator, "st-fb-backup"),
        max_retries=0,
    )
    result = llm.invoke(QUESTION)
    check_stairs(result.content, result.response_metadata, proposer_words=QUESTION_WORDS + 2)
    assert result.content.startswith("st-fb-backup read 3 references")
    assert result.response_metadata["aggregator"]["model"] == "st-fb-backup"
    assert result.response_metadata["aggregator"]["fallback_from"].startswith("st-fb-agg: ")
    # Once the fallback answered, the later stairs go to it directly.
    assert len(openai_simulator.requests_for("st-fb-agg")) == 1


# -- tools and schemas: one synthesis instead ------------------------------------------


def test_with_tools_the_call_falls_back_to_synthesize(openai_simulator: OpenAISimulator) -> None:
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return city

    llm = ensemble(openai_simulator, "st-tools")
    result = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(
        "What is the weather in Paris?"
    )
    assert result.tool_calls[0]["name"] == "get_weather"
    record = result.response_metadata["staircase"]
    assert record["fallback"] == "synthesize"
    assert "tools are bound" in record["reason"]
    (aggregation,) = openai_simulator.requests_for("st-tools-agg")
    assert CONTINUATION_PROMPT not in aggregation.body["messages"][0]["content"]
    assert len(parse_references(aggregation.body["messages"][0]["content"])) == PROPOSERS


def test_with_a_schema_the_call_falls_back_to_synthesize(
    openai_simulator: OpenAISimulator,
) -> None:
    class Answer(BaseModel):
        """An answer."""

        text: str

    llm = ensemble(openai_simulator, "st-schema")
    structured = llm.with_structured_output(Answer, method="json_schema", include_raw=True).invoke(
        QUESTION
    )
    assert isinstance(structured["parsed"], Answer)
    record = structured["raw"].response_metadata["staircase"]
    assert record == {
        "fallback": "synthesize",
        "reason": "a schema is bound: the answer is written in one call",
    }
