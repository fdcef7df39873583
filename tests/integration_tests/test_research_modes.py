"""Research modes: the LLM-ranker baseline and Self-MoA, shown by what the aggregator saw."""

from __future__ import annotations

import pytest
from langchain_core.language_models import BaseChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage

from langchain_moa import MoAChatModel
from langchain_moa.presets import self_moa
from langchain_moa.prompts import DEFAULT_RANKER_PROMPT
from langchain_moa.testing import OpenAISimulator
from langchain_moa.testing.answers import parse_references


def ranker(sim: OpenAISimulator, tag: str, judge: BaseChatModel | None = None) -> MoAChatModel:
    return MoAChatModel(
        proposers=[sim.chat_model(f"{tag}-p{i}") for i in range(3)],
        aggregator=judge or sim.chat_model(f"{tag}-ranker"),
        layers=2,
        aggregation="rank",
    )


def judge(reply: str) -> GenericFakeChatModel:
    """A ranker whose reply is fixed, whatever it is shown."""
    return GenericFakeChatModel(messages=iter([AIMessage(reply)]))


@pytest.mark.parametrize("how", ["invoke", "stream"])
def test_ranker_returns_the_chosen_proposal_word_for_word(
    openai_simulator: OpenAISimulator, how: str
) -> None:
    tag = f"rank-{how}"
    llm = ranker(openai_simulator, tag)
    if how == "invoke":
        result = llm.invoke("Which is best?")
    else:
        chunks = list(llm.stream("Which is best?"))
        result = chunks[0]
        for chunk in chunks[1:]:
            result += chunk
    # What the ranker received: the ranking prompt and all three proposals.
    body = openai_simulator.requests_for(f"{tag}-ranker")[0].body
    system = body["messages"][0]["content"]
    assert system.startswith(DEFAULT_RANKER_PROMPT + "\n1. ")
    assert [r.split()[0] for r in parse_references(system)] == [f"{tag}-p{i}" for i in range(3)]
    # What it returned: the simulator's reply "... read 3 references ..." names
    # proposal 3 first, so proposal 3 is the answer, unchanged.
    meta = result.response_metadata
    assert meta["ranker"]["choice"] == 3
    assert meta["ranker"]["parsed"] is True
    assert meta["ranker"]["output"].startswith(f"{tag}-ranker read 3 references")
    assert result.content == meta["proposals"][0][2]["text"] == f"{tag}-p2 answers: Which is best?"
    # Usage, in simulator tokens (whitespace-separated words): three proposers
    # (3 words in, "<p> answers: Which is best?" out), then the ranker (its system
    # text and the question in, "<ranker> read 3 references [..] and answers: ..." out).
    ranker_in = len(system.split()) + 3
    assert result.usage_metadata["total_tokens"] == 3 * (3 + 5) + ranker_in + 9 + 3


@pytest.mark.parametrize(
    "reply",
    ["2", "Response 2 is the most complete.", "Not 0, not 9, but number 2."],
)
def test_the_ranker_s_choice_is_the_answer_whatever_it_is(
    openai_simulator: OpenAISimulator, reply: str
) -> None:
    # The ranker picks the middle proposal, which the simulator's own wording
    # ("... read 3 references ...") would never pick: the first number that names
    # a proposal wins.
    tag = "rank-pick"
    result = ranker(openai_simulator, tag, judge(reply)).invoke("Which is best?")
    assert result.content == f"{tag}-p1 answers: Which is best?"
    assert result.response_metadata["ranker"] == {"choice": 2, "parsed": True, "output": reply}
    # The judge reports no usage: the total is the three proposers' (3 in, 5 out each).
    assert result.usage_metadata["total_tokens"] == 3 * (3 + 5)


def test_the_ranker_s_last_proposal_streams_as_the_answer(
    openai_simulator: OpenAISimulator,
) -> None:
    tag = "rank-last"
    chunks = list(ranker(openai_simulator, tag, judge("3")).stream("Which is best?"))
    assert "".join(str(c.content) for c in chunks) == f"{tag}-p2 answers: Which is best?"


@pytest.mark.parametrize("reply", ["I cannot decide.", "0", "Neither 4 nor 17."])
def test_an_unparseable_ranking_falls_back_to_the_first_proposal(
    openai_simulator: OpenAISimulator, reply: str
) -> None:
    # Documented fallback: no number names a proposal, so the first proposal is
    # the answer and the record says the reply was not understood.
    tag = "rank-fallback"
    result = ranker(openai_simulator, tag, judge(reply)).invoke("Which is best?")
    assert result.content == f"{tag}-p0 answers: Which is best?"
    assert result.response_metadata["ranker"] == {"choice": 1, "parsed": False, "output": reply}


def test_ranker_refuses_tools(openai_simulator: OpenAISimulator) -> None:
    llm = ranker(openai_simulator, "rank-tools")

    def magic_function(input: int) -> int:
        """Magic."""
        return input

    with pytest.raises(ValueError, match="cannot call tools"):
        llm.bind_tools([magic_function]).invoke("q")


def test_self_moa_samples_one_model(openai_simulator: OpenAISimulator) -> None:
    model = openai_simulator.chat_model("selfmoa-strong")
    llm = self_moa(model, samples=4, temperature=0.9)
    result = llm.invoke("Explain MoA.")
    requests = openai_simulator.requests_for("selfmoa-strong")
    assert len(requests) == 5  # 4 samples + the aggregation
    assert {r.body["temperature"] for r in requests} == {0.9}
    aggregator_refs = parse_references(requests[-1].body["messages"][0]["content"])
    assert aggregator_refs == ["selfmoa-strong answers: Explain MoA."] * 4
    assert result.content == (
        "selfmoa-strong read 4 references [selfmoa-strong, selfmoa-strong, selfmoa-strong, "
        "selfmoa-strong] and answers: Explain MoA."
    )
    with pytest.raises(ValueError, match="temperature > 0"):
        self_moa(model, temperature=0)
