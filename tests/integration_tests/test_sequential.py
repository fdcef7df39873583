"""Sequential aggregation (Self-MoA-Seq) over real HTTP, shown by what each step read.

Each step's answer from the simulator says what it read (``"agg read 4
references [agg (20 words), p3 (5 words), ...] and answers: ..."``): the first
reference of a later step is the synthesis so far, written by the aggregator.
"""

from __future__ import annotations

import asyncio
import functools
import operator
from typing import Any

import pytest
from langchain_openai import ChatOpenAI

from langchain_moa import MoAChatModel, Sequential
from langchain_moa.prompts import DEFAULT_SEQUENTIAL_PROMPT
from langchain_moa.testing import OpenAISimulator
from langchain_moa.testing.answers import parse_references
from tests.paper_prompt import PAPER_PROMPT

QUESTION = "Why is the sky blue?"


def chat(sim: OpenAISimulator, model: str) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=sim.base_url, api_key="sim", model=model, max_retries=0, stream_usage=True
    )


def ensemble(sim: OpenAISimulator, tag: str, proposers: int, **kwargs: Any) -> MoAChatModel:
    return MoAChatModel(
        proposers=[chat(sim, f"{tag}-p{i}") for i in range(proposers)],
        aggregator=chat(sim, f"{tag}-agg"),
        layers=2,
        aggregation=kwargs.pop("aggregation", Sequential(window=3)),
        **kwargs,
    )


def steps_sent(sim: OpenAISimulator, model: str) -> list[tuple[str, list[str]]]:
    """Each step's system prompt and references, as sent over HTTP."""
    sent = []
    for request in sim.requests_for(model):
        system = request.body["messages"][0]["content"]
        sent.append((system, parse_references(system)))
    return sent


@pytest.mark.parametrize("how", ["invoke", "stream", "ainvoke", "astream"])
def test_each_step_reads_the_synthesis_and_the_next_window(
    openai_simulator: OpenAISimulator, how: str
) -> None:
    tag = f"seq-{how}"
    llm = ensemble(openai_simulator, tag, proposers=7)
    if how == "invoke":
        result = llm.invoke(QUESTION)
    elif how == "ainvoke":
        result = asyncio.run(llm.ainvoke(QUESTION))
    elif how == "stream":
        chunks = list(llm.stream(QUESTION))
        result = functools.reduce(operator.add, chunks)
        assert sum(bool(c.content) for c in chunks) > 2  # the last step streams
    else:

        async def collect() -> list[Any]:
            return [c async for c in llm.astream(QUESTION)]

        chunks = asyncio.run(collect())
        result = functools.reduce(operator.add, chunks)
        assert sum(bool(c.content) for c in chunks) > 2

    proposal = f"{tag}-p{{}} answers: {QUESTION}"
    sent = steps_sent(openai_simulator, f"{tag}-agg")
    assert len(sent) == 3
    # Step 1: the first window under the paper's prompt.
    assert sent[0][0].startswith(PAPER_PROMPT + "\n1. ")
    assert sent[0][1] == [proposal.format(i) for i in range(3)]
    # Steps 2 and 3: the synthesis so far, then the next window, under the keep-the-best prompt.
    first_synthesis = (
        f"{tag}-agg read 3 references [{tag}-p0, {tag}-p1, {tag}-p2] and answers: {QUESTION}"
    )
    assert sent[1][0].startswith(DEFAULT_SEQUENTIAL_PROMPT + "\n1. ")
    assert sent[1][1] == [first_synthesis, *(proposal.format(i) for i in (3, 4, 5))]
    words = len(first_synthesis.split())
    second_synthesis = (
        f"{tag}-agg read 4 references [{tag}-agg ({words} words), {tag}-p3 (7 words), "
        f"{tag}-p4 (7 words), {tag}-p5 (7 words)] and answers: {QUESTION}"
    )
    assert sent[2][1] == [second_synthesis, proposal.format(6)]
    # The context stays at most window + 1 references.
    assert max(len(refs) for _, refs in sent) == 4
    # The answer is the last step's, which read the second synthesis and p6.
    words = len(second_synthesis.split())
    assert result.content == (
        f"{tag}-agg read 2 references [{tag}-agg ({words} words), {tag}-p6 (7 words)] "
        f"and answers: {QUESTION}"
    )

    record = result.response_metadata["sequential"]
    assert record["window"] == 3
    assert [s["proposals"] for s in record["steps"]] == [[1, 2, 3], [4, 5, 6], [7]]
    assert [len(s["references"]) for s in record["steps"]] == [3, 4, 2]
    aggregator = result.response_metadata["aggregator"]
    assert aggregator["attempts"] == 3
    step_tokens = sum(s["usage"]["total_tokens"] for s in record["steps"])
    assert aggregator["usage"]["total_tokens"] == step_tokens
    proposer_tokens = sum(
        p["usage"]["total_tokens"] for p in result.response_metadata["proposals"][0]
    )
    assert result.usage_metadata["total_tokens"] == proposer_tokens + step_tokens


def test_the_default_window_is_three_and_a_small_layer_is_one_synthesis(
    openai_simulator: OpenAISimulator,
) -> None:
    llm = ensemble(openai_simulator, "seq-small", proposers=3, aggregation="sequential")
    result = llm.invoke(QUESTION)
    (sent,) = steps_sent(openai_simulator, "seq-small-agg")
    twin = ensemble(openai_simulator, "seq-twin", proposers=3, aggregation="synthesize")
    twin.invoke(QUESTION)
    (synthesized,) = steps_sent(openai_simulator, "seq-twin-agg")
    assert sent[0] == synthesized[0].replace("seq-twin", "seq-small")
    assert result.response_metadata["sequential"]["steps"][0]["proposals"] == [1, 2, 3]


def test_each_step_is_a_traced_run_and_the_last_takes_the_tools(
    openai_simulator: OpenAISimulator,
) -> None:
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return city

    llm = ensemble(openai_simulator, "seq-tools", proposers=4, aggregation=Sequential(window=2))
    result = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(
        "What is the weather in Paris?"
    )
    assert result.tool_calls[0]["name"] == "get_weather"
    steps = openai_simulator.requests_for("seq-tools-agg")
    assert [r.body["tool_choice"] for r in steps[:-1]] == ["none"]
    assert steps[-1].body["tool_choice"]["function"]["name"] == "get_weather"
    assert len(result.response_metadata["sequential"]["steps"]) == 2
