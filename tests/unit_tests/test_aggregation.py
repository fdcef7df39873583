"""The aggregation seam without a network: names, settings, identities, graph shape, stairs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage

import langchain_moa
from langchain_moa import MoAChatModel
from langchain_moa.aggregation import AggregationStrategy
from langchain_moa.calls import InnerCall, StreamBrokenError
from langchain_moa.prompts import (
    CONTINUATION_PROMPT,
    DEFAULT_SEQUENTIAL_PROMPT,
    UNFINISHED_MARKER,
    append_to_system,
    continuation_block,
    format_references,
    mark_unfinished,
)
from langchain_moa.resilience import CallLimits, RetryPolicy
from langchain_moa.strategies import (
    BUILT_IN,
    Rank,
    Sequential,
    Staircase,
    Synthesize,
    resolve_aggregation,
)
from langchain_moa.strategies.staircase import _joined, _StairReader
from langchain_moa.testing.answers import simulated_answer, strategy_answer


def model(name: str) -> FakeListChatModel:
    return FakeListChatModel(responses=["x"], name=name)


def ensemble(**kwargs: Any) -> MoAChatModel:
    return MoAChatModel(
        proposers=[model("a"), model("b"), model("c")], aggregator=model("agg"), **kwargs
    )


# -- names, settings and identities ------------------------------------------------


def test_every_name_resolves_to_its_strategy_with_default_settings() -> None:
    assert {name: type(resolve_aggregation(name)) for name in BUILT_IN} == {
        "synthesize": Synthesize,
        "rank": Rank,
        "staircase": Staircase,
        "sequential": Sequential,
    }
    assert resolve_aggregation("sequential") == Sequential(window=3)
    configured = Staircase(chunk_tokens=48)
    assert resolve_aggregation(configured) is configured


def test_an_unknown_name_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'synthesize', 'rank', 'staircase', 'sequential'"):
        ensemble(aggregation="vote")
    with pytest.raises(ValueError, match="aggregation must be"):
        resolve_aggregation(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Staircase(chunk_tokens=0), "chunk_tokens"),
        (lambda: Staircase(stair_tokens=True), "stair_tokens"),
        (lambda: Staircase(stair_wait=-1), "stair_wait"),
        (lambda: Staircase(stair_wait=float("inf")), "stair_wait"),
        (lambda: Staircase(min_proposers=0), "min_proposers"),
        (lambda: Sequential(window=0), "window"),
        (lambda: Sequential(prompt=" "), "prompt"),
    ],
)
def test_bad_settings_fail_when_the_strategy_is_made(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_identities_name_the_strategy_and_only_its_changed_settings() -> None:
    assert Synthesize().identity == "synthesize"
    assert Staircase().identity == "staircase"
    assert Staircase(chunk_tokens=48).identity == "staircase(chunk_tokens=48)"
    assert str(Sequential(window=2)) == "sequential(window=2)"
    assert Sequential(prompt="p" * 100).identity.startswith("sequential(prompt=sha256:")
    assert Staircase(chunk_tokens=48) == Staircase(chunk_tokens=48)
    assert hash(Staircase(chunk_tokens=48)) == hash(Staircase(chunk_tokens=48))


def test_the_cache_key_tells_strategies_and_their_settings_apart() -> None:
    def key(aggregation: Any) -> Any:
        return ensemble(aggregation=aggregation)._get_llm_string()

    keys = {
        key(value)
        for value in (
            "synthesize",
            "rank",
            "staircase",
            Staircase(chunk_tokens=48),
            Staircase(stair_wait=1.0),
            "sequential",
            Sequential(window=2),
        )
    }
    assert len(keys) == 7
    # The same strategy by name or by instance with the same settings: one key.
    assert key("staircase") == key(Staircase())
    assert key("rank") == key(Rank())


def test_a_configured_instance_is_kept_as_given() -> None:
    strategy = Sequential(window=2)
    llm = ensemble(aggregation=strategy)
    assert llm.aggregation is strategy
    assert llm.engine_settings().strategy is strategy
    assert ensemble(aggregation="rank").engine_settings().strategy == Rank()
    assert ensemble().engine_settings().strategy == Synthesize()


def test_the_ranker_refuses_tools_and_schemas_the_others_take_them() -> None:
    with pytest.raises(ValueError, match="cannot call tools or follow a schema"):
        Rank().check_call(tools=True, structured=False)
    for strategy in (Synthesize(), Staircase(), Sequential()):
        strategy.check_call(tools=True, structured=True)


def test_strategies_are_exported() -> None:
    for name in ("AggregationStrategy", "Synthesize", "Rank", "Staircase", "Sequential"):
        assert getattr(langchain_moa, name) is not None
    assert issubclass(langchain_moa.Staircase, AggregationStrategy)


# -- the graph's shape ---------------------------------------------------------------


def nodes(llm: MoAChatModel) -> list[str]:
    return [name for name in llm.graph.get_graph().nodes if not name.startswith("__")]


def test_the_staircase_runs_the_last_layer_in_the_aggregate_node() -> None:
    assert nodes(ensemble(layers=3)) == ["layer_1", "layer_2", "aggregate"]
    assert nodes(ensemble(layers=3, aggregation="staircase")) == ["layer_1", "aggregate"]
    assert nodes(ensemble(layers=2, aggregation="staircase")) == ["aggregate"]
    assert nodes(ensemble(layers=3, aggregation="sequential")) == [
        "layer_1",
        "layer_2",
        "aggregate",
    ]


# -- prompts ----------------------------------------------------------------------------


def test_the_continuation_block_quotes_the_answer_so_far() -> None:
    block = continuation_block("The sky is")
    assert block == f"{CONTINUATION_PROMPT}\n<response-so-far>\nThe sky is\n</response-so-far>"
    assert mark_unfinished("half an") == f"half an\n{UNFINISHED_MARKER}"


def test_append_to_system_copies_and_keeps_the_callers_messages() -> None:
    messages = [SystemMessage("Be brief."), HumanMessage("Hi")]
    appended = append_to_system(messages, "More.")
    assert appended[0].content == "Be brief.\n\nMore."
    assert messages[0].content == "Be brief."
    assert append_to_system([HumanMessage("Hi")], "More.")[0] == SystemMessage("More.")
    parts = append_to_system([SystemMessage([{"type": "text", "text": "A"}])], "B")
    assert parts[0].content == [{"type": "text", "text": "A"}, {"type": "text", "text": "\n\nB"}]


# -- the simulator shows what a strategy's step read ----------------------------------


def system_request(system: str, question: str = "Q?") -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ]
    }


def test_the_simulator_shows_unfinished_references_and_the_answer_to_continue() -> None:
    references = ["p0 answers: one two", mark_unfinished("p1 answers:")]
    system = format_references("Prompt.\n\nResponses from models:", references)
    system += "\n\n" + continuation_block("agg wrote four words")
    assert simulated_answer("agg", system_request(system)) == (
        "agg read 2 references [p0 (4 words), p1 (2 words, unfinished)] "
        "continuing an answer of 4 words and answers: Q?"
    )


def test_the_simulator_shows_a_sequential_step() -> None:
    system = format_references(DEFAULT_SEQUENTIAL_PROMPT, ["agg read it all", "p3 answers: x"])
    assert simulated_answer("agg", system_request(system)) == (
        "agg read 2 references [agg (4 words), p3 (3 words)] and answers: Q?"
    )


def test_the_simulator_keeps_its_plain_formats_for_other_requests() -> None:
    system = format_references("Responses from models:", ["p0 answers: x"])
    assert strategy_answer("agg", system_request(system)["messages"]) is None
    assert simulated_answer("agg", system_request(system)) == (
        "agg read 1 references [p0] and answers: Q?"
    )


# -- a stair's words: cut at a word boundary, joined to the answer so far -------------


class Emitted:
    def __init__(self) -> None:
        self.texts: list[str] = []

    def emit(self, text: str) -> None:
        self.texts.append(text)


class ChunkStream:
    """A runnable stand-in that streams the given chunks."""

    def __init__(self, pieces: list[str], finish: str | None, fail: bool = False) -> None:
        self.pieces, self.finish, self.fail = pieces, finish, fail

    async def astream(self, messages: Any, config: Any) -> AsyncIterator[AIMessageChunk]:
        for piece in self.pieces:
            yield AIMessageChunk(content=piece)
        if self.fail:
            raise ConnectionError("gone")
        yield AIMessageChunk(content="", response_metadata={"finish_reason": self.finish})


def read_stair(
    pieces: list[str], finish: str | None, *, answered: str = "", cap: int | None = 4
) -> tuple[_StairReader, Emitted, Any]:
    emitted = Emitted()
    reader = _StairReader(emitted, answered, cap)  # type: ignore[arg-type]
    call = InnerCall(lambda m: m, None, [], {}, CallLimits(RetryPolicy(0)))  # type: ignore[arg-type]
    message = asyncio.run(reader.consume(ChunkStream(pieces, finish), call))  # type: ignore[arg-type]
    return reader, emitted, message


def test_a_stair_cut_by_its_limit_drops_the_unfinished_word() -> None:
    reader, emitted, message = read_stair([" The", " sky", " is", " blu"], "length")
    assert reader.text == message.content == "The sky is "
    assert "".join(emitted.texts) == reader.text
    assert reader.tokens == 3


def test_a_stair_that_ends_by_itself_keeps_its_last_word() -> None:
    reader, _, _ = read_stair([" The", " sky", "."], "stop")
    assert reader.text == "The sky."


def test_the_final_stair_keeps_a_word_cut_by_the_callers_limit() -> None:
    reader, _, _ = read_stair([" The", " sky"], "length", cap=None)
    assert reader.text == "The sky"


def test_a_provider_that_ignores_the_limit_is_cut_anyway() -> None:
    reader, _, _ = read_stair(["a ", "b ", "c ", "d ", "e ", "f "], "stop", cap=3)
    assert reader.text == "a b c "


def test_a_stair_continues_the_answer_with_one_space() -> None:
    assert read_stair(["blue", " because"], "stop", answered="The sky is")[0].text == (
        " blue because"
    )
    assert read_stair([" blue"], "stop", answered="The sky is ")[0].text == "blue"
    assert _joined("The sky is blue", ", because") == ", because"
    assert _joined("The sky", "\n\nNext") == "\n\nNext"


def test_a_stair_broken_after_some_words_keeps_the_whole_partial_answer() -> None:
    emitted = Emitted()
    reader = _StairReader(emitted, "Before ", 10)  # type: ignore[arg-type]
    call = InnerCall(lambda m: m, None, [], {}, CallLimits(RetryPolicy(0)))  # type: ignore[arg-type]
    stream = ChunkStream(["one ", "two "], None, fail=True)
    with pytest.raises(StreamBrokenError) as broken:
        asyncio.run(reader.consume(stream, call))  # type: ignore[arg-type]
    assert broken.value.partial_text == "Before one two "
