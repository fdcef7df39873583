"""Unit tests of MoAChatModel's semantics with in-process fake models."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.globals import set_llm_cache
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langgraph.graph import START, MessagesState, StateGraph

from langchain_moa import (
    DEFAULT_AGGREGATOR_PROMPT,
    AggregatorFailedError,
    MoAChatModel,
    ProposersFailedError,
)
from tests.paper_prompt import PAPER_PROMPT
from tests.unit_tests.fakes import RecordingChatModel


def pairs(messages: list) -> list[tuple[str, object]]:
    """(type, content) of each message: what a provider is sent."""
    return [(m.type, m.content) for m in messages]


def fake(name: str, **kwargs: object) -> RecordingChatModel:
    return RecordingChatModel(name=name, **kwargs)


def test_default_prompt_is_the_papers() -> None:
    assert DEFAULT_AGGREGATOR_PROMPT == PAPER_PROMPT
    assert (
        MoAChatModel(proposers=[fake("a")], aggregator=fake("z")).aggregator_prompt == PAPER_PROMPT
    )


def test_layer_one_sees_the_conversation_as_given_and_later_layers_the_references() -> None:
    a1, b1, a2, agg = fake("a1"), fake("b1"), fake("a2"), fake("agg")
    llm = MoAChatModel(proposers=[[a1, b1], [a2]], aggregator=agg)
    result = llm.invoke("Why is the sky blue?")

    assert [pairs(r) for r in a1.received] == [[("human", "Why is the sky blue?")]]
    assert [pairs(r) for r in b1.received] == [[("human", "Why is the sky blue?")]]
    expected_system = PAPER_PROMPT + "\n1. a1: answer 1\n2. b1: answer 1"
    assert len(a2.received) == 1
    system, human = a2.received[0]
    assert isinstance(system, SystemMessage)
    assert system.content == expected_system
    assert human.content == "Why is the sky blue?"
    # The aggregator reads only the last proposer layer.
    assert agg.received[0][0].content == PAPER_PROMPT + "\n1. a2: answer 1"
    assert result.content == "agg: answer 1"


def test_references_are_appended_to_the_callers_system_message() -> None:
    a, agg = fake("a"), fake("agg")
    llm = MoAChatModel(proposers=[a], aggregator=agg, layers=2)
    llm.invoke([SystemMessage("Be terse."), HumanMessage("Hi")])
    system = agg.received[0][0]
    assert system.content == "Be terse.\n\n" + PAPER_PROMPT + "\n1. a: answer 1"
    assert a.received[0][0].content == "Be terse."


@pytest.mark.parametrize("layers", [2, 3, 4])
def test_layers_count_calls_and_reuse_the_proposers(layers: int) -> None:
    a, b, agg = fake("a"), fake("b"), fake("agg")
    llm = MoAChatModel(proposers=[a, b], aggregator=agg, layers=layers)
    result = llm.invoke("q")
    assert len(a.received) == len(b.received) == layers - 1
    assert len(agg.received) == 1
    proposals = result.response_metadata["proposals"]
    assert [len(layer) for layer in proposals] == [2] * (layers - 1)
    # Each later layer saw both answers of the layer before it.
    last = layers - 1
    assert agg.received[0][0].content.endswith(f"\n1. a: answer {last}\n2. b: answer {last}")


def test_multi_turn_history_passes_whole_to_every_agent() -> None:
    a, agg = fake("a"), fake("agg")
    history = [
        SystemMessage("sys"),
        HumanMessage("first"),
        AIMessage("earlier final answer"),
        HumanMessage("second"),
    ]
    MoAChatModel(proposers=[a], aggregator=agg, layers=3).invoke(history)
    assert pairs(a.received[0]) == pairs(history)
    assert [m.content for m in a.received[1][1:]] == [
        "first",
        "earlier final answer",
        "second",
    ]
    assert [m.content for m in agg.received[0][1:]] == [
        "first",
        "earlier final answer",
        "second",
    ]


def test_callers_messages_are_not_mutated() -> None:
    messages = [SystemMessage("sys"), HumanMessage("q")]
    before = [m.model_dump() for m in messages]
    llm = MoAChatModel(proposers=[fake("a"), fake("b")], aggregator=fake("agg"))
    llm.invoke(messages)
    llm.invoke(messages)
    assert [m.model_dump() for m in messages] == before
    assert len(messages) == 2


def test_usage_is_summed_over_every_inner_call() -> None:
    llm = MoAChatModel(
        proposers=[
            fake("a", input_tokens=10, output_tokens=1),
            fake("b", input_tokens=20, output_tokens=2),
        ],
        aggregator=fake("agg", input_tokens=100, output_tokens=7),
        layers=3,
    )
    usage = llm.invoke("q").usage_metadata
    assert usage == {
        "input_tokens": 2 * (10 + 20) + 100,
        "output_tokens": 2 * (1 + 2) + 7,
        "total_tokens": 2 * (11 + 22) + 107,
    }


def test_response_metadata_reports_every_proposal() -> None:
    llm = MoAChatModel(
        proposers=[fake("a", delay=0.05), fake("b", delay=0.05)],
        aggregator=fake("agg"),
        layers=3,
        model="my-moa",
    )
    meta = llm.invoke("q").response_metadata
    assert meta["model_name"] == "my-moa"
    assert meta["degraded"] is False
    layer2 = meta["proposals"][1]
    assert [(p["layer"], p["index"], p["model"], p["text"]) for p in layer2] == [
        (2, 0, "a", "a: answer 2"),
        (2, 1, "b", "b: answer 2"),
    ]
    for proposal in layer2:
        assert proposal["usage"]["total_tokens"] == 8
        assert 0.05 <= proposal["latency_s"] < 30  # the fake's delay, on a busy machine
        assert proposal["error"] is None
    assert meta["aggregator"]["model"] == "agg"
    assert meta["finish_reason"] == "stop"


def test_a_failed_proposer_is_dropped_and_reported() -> None:
    a, broken, c, agg = fake("a"), fake("broken", fail=True), fake("c"), fake("agg")
    result = MoAChatModel(proposers=[a, broken, c], aggregator=agg, layers=2).invoke("q")
    # Numbering closes up: no "None", no placeholder.
    assert agg.received[0][0].content == PAPER_PROMPT + "\n1. a: answer 1\n2. c: answer 1"
    meta = result.response_metadata
    assert meta["degraded"] is True
    assert meta["failed_proposers"] == 1
    failed = meta["proposals"][0][1]
    assert failed["model"] == "broken"
    assert failed["text"] is None
    assert failed["error"] == "RuntimeError: broken is down"


def test_a_layer_with_no_answers_raises_with_every_cause() -> None:
    llm = MoAChatModel(
        proposers=[fake("x", fail=True), fake("y", fail=True)],
        aggregator=fake("agg"),
        layers=2,
    )
    with pytest.raises(ProposersFailedError) as caught:
        llm.invoke("q")
    error = caught.value
    assert error.layer == 1
    assert [p.model for p in error.failures] == ["x", "y"]
    assert "x (#0): RuntimeError: x is down" in str(error)
    assert "y (#1): RuntimeError: y is down" in str(error)


def test_min_proposers_is_enforced() -> None:
    llm = MoAChatModel(
        proposers=[fake("a"), fake("x", fail=True)],
        aggregator=fake("agg"),
        layers=2,
        min_proposers=2,
    )
    with pytest.raises(ProposersFailedError, match="1 of 2 proposers answered, 2 needed"):
        llm.invoke("q")


def test_aggregator_failure_keeps_the_proposals() -> None:
    llm = MoAChatModel(proposers=[fake("a")], aggregator=fake("agg", fail=True), layers=2)
    with pytest.raises(AggregatorFailedError) as caught:
        llm.invoke("q")
    assert [p.text for p in caught.value.proposals] == ["a: answer 1"]
    assert "agg is down" in str(caught.value)


def test_self_moa_same_model_several_times() -> None:
    same = fake("same")
    result = MoAChatModel(proposers=[same, same, same], aggregator=fake("agg"), layers=2).invoke(
        "q"
    )
    assert len(same.received) == 3
    assert len(result.response_metadata["proposals"][0]) == 3


PROPOSER_DELAY = 0.3


def _slow_ensemble() -> MoAChatModel:
    return MoAChatModel(
        proposers=[fake(f"p{i}", delay=PROPOSER_DELAY) for i in range(4)],
        aggregator=fake("agg", delay=PROPOSER_DELAY),
        layers=3,
    )


def test_proposers_run_in_parallel_sync() -> None:
    # Sequential would be 4 proposers x 2 layers + aggregator = 2.7 s; the
    # critical path is 3 x 0.3 = 0.9 s.
    started = time.perf_counter()
    _slow_ensemble().invoke("q")
    assert time.perf_counter() - started < 1.6


async def test_proposers_run_in_parallel_async() -> None:
    started = time.perf_counter()
    await _slow_ensemble().ainvoke("q")
    assert time.perf_counter() - started < 1.6


async def test_ainvoke_batch_and_abatch() -> None:
    llm = MoAChatModel(proposers=[fake("a"), fake("b")], aggregator=fake("agg"), layers=2)
    assert (await llm.ainvoke("q")).content.startswith("agg: answer")
    assert len(llm.batch(["q1", "q2", "q3"])) == 3
    results = await llm.abatch(["q1", "q2"])
    assert all(isinstance(r, AIMessage) and r.usage_metadata for r in results)


def test_stream_concatenates_to_the_invoke_answer() -> None:
    llm = MoAChatModel(proposers=[fake("a")], aggregator=fake("agg"), layers=2)
    chunks = list(llm.stream("q"))
    assert len(chunks) > 2
    assert [c for c in chunks if c.usage_metadata] == [chunks[-1]]
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    # A fresh ensemble gives the same deterministic answer via invoke.
    again = MoAChatModel(proposers=[fake("a")], aggregator=fake("agg"), layers=2).invoke("q")
    assert total.content == again.content == "agg: answer 1"
    assert total.usage_metadata == again.usage_metadata
    assert total.response_metadata["model_name"] == "mixture-of-agents"


async def test_astream_concatenates_to_the_invoke_answer() -> None:
    llm = MoAChatModel(proposers=[fake("a")], aggregator=fake("agg"), layers=2)
    chunks = [c async for c in llm.astream("q")]
    assert "".join(str(c.content) for c in chunks) == "agg: answer 1"
    assert sum(1 for c in chunks if c.usage_metadata) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"proposers": []}, "proposers is empty"),
        ({"proposers": [[fake("a")], []]}, "proposer layer 2 is empty"),
        ({"proposers": [fake("a"), "gpt-4o"]}, "position 1 is a str, not a chat model"),
        ({"proposers": [[fake("a")], [fake("b"), 3]]}, "layer 2, position 1 is a int"),
        ({"proposers": [fake("a"), [fake("b")]]}, "mixes models and lists"),
        ({"proposers": [fake("a")], "layers": 1}, "layers must be at least 2"),
        (
            {"proposers": [[fake("a")], [fake("b")]], "layers": 4},
            "does not match the 2 proposer layers",
        ),
        ({"proposers": [fake("a")], "aggregator": "gpt-4o"}, "aggregator is a str"),
        ({"proposers": [fake("a")], "temprature": 0.5}, "temprature"),
    ],
)
def test_invalid_configuration_names_the_problem(kwargs: dict, message: str) -> None:
    params = {"aggregator": fake("agg"), **kwargs}
    with pytest.raises(ValueError, match=message):
        MoAChatModel(**params)


def test_layers_follow_from_per_layer_lists() -> None:
    llm = MoAChatModel(proposers=[[fake("a")], [fake("b"), fake("c")]], aggregator=fake("agg"))
    assert llm.layers == 3
    assert [len(layer) for layer in llm.proposer_layers] == [1, 2]
    assert MoAChatModel(proposers=[fake("a")], aggregator=fake("agg")).layers == 3


def test_empty_input_and_model_override_are_refused() -> None:
    llm = MoAChatModel(proposers=[fake("a")], aggregator=fake("agg"))
    with pytest.raises(ValueError, match="empty message list"):
        llm.invoke([])
    with pytest.raises(TypeError, match="no single model to override"):
        llm.invoke("q", model="other")


def odd_block() -> HumanMessage:
    """A message whose content list gained a block that is neither text nor a dict."""
    message = HumanMessage(content=["What is this?"])
    message.content.append(42)  # type: ignore[union-attr,arg-type]
    return message


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda llm: llm.invoke("q", max_tokens=1.5),
            TypeError,
            "max_tokens must be an integer, got 1.5",
        ),
        (lambda llm: llm.invoke("q", seed=True), TypeError, "seed must be an integer, got True"),
        (
            lambda llm: llm.invoke("q", temperature="hot"),
            TypeError,
            "temperature must be a number, got 'hot'",
        ),
        (
            lambda llm: llm.invoke("q", top_p=-0.5),
            ValueError,
            "top_p must be a finite number >= 0, got -0.5",
        ),
        (
            lambda llm: llm.invoke([odd_block()]),
            ValueError,
            "unsupported content block of Python type int;",
        ),
    ],
)
def test_bad_call_arguments_are_refused_before_any_model_call_naming_the_value(
    call: object, error: type[Exception], message: str
) -> None:
    a, agg = fake("a"), fake("agg")
    llm = MoAChatModel(proposers=[a], aggregator=agg)
    with pytest.raises(error, match=re.escape(message)):
        call(llm)  # type: ignore[operator]
    assert a.received == agg.received == []


def test_identifying_params_distinguish_ensembles() -> None:
    one = MoAChatModel(proposers=[FakeListChatModel(responses=["x"])], aggregator=fake("agg"))
    two = MoAChatModel(proposers=[FakeListChatModel(responses=["y"])], aggregator=fake("agg"))
    assert one._get_llm_string() != two._get_llm_string()
    same = MoAChatModel(proposers=[FakeListChatModel(responses=["x"])], aggregator=fake("agg"))
    assert one._get_llm_string() == same._get_llm_string()


def test_stop_goes_to_the_aggregator_only() -> None:
    seen: dict[str, object] = {}

    class StopRecorder(RecordingChatModel):
        def _generate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
            seen[self.name or ""] = stop
            return super()._generate(messages, stop, run_manager, **kwargs)

    llm = MoAChatModel(
        proposers=[StopRecorder(name="a")],
        aggregator=StopRecorder(name="agg"),
        layers=2,
    )
    llm.invoke("q", stop=["END"])
    assert seen == {"a": None, "agg": ["END"]}


def test_construction_is_cheap_and_the_graph_is_built_once() -> None:
    llm = MoAChatModel(proposers=[fake("a")], aggregator=fake("agg"))
    assert "graph" not in llm.__dict__
    graph = llm.graph
    assert llm.graph is graph
    nodes = set(graph.get_graph().nodes)
    assert {"layer_1", "layer_2", "aggregate"} <= nodes


def test_graph_runs_alone_and_as_a_node_of_a_users_graph() -> None:
    llm = MoAChatModel(proposers=[fake("a"), fake("b")], aggregator=fake("agg"), layers=2)
    out = llm.graph.invoke({"messages": [HumanMessage("q")]})
    assert out["messages"][-1].content == "agg: answer 1"
    assert [p.model for p in out["proposals"]] == ["a", "b"]

    builder = StateGraph(MessagesState)
    builder.add_node("moa", llm.graph)
    builder.add_edge(START, "moa")
    parent = builder.compile()
    result = parent.invoke({"messages": [HumanMessage("q")]})
    assert [m.type for m in result["messages"]] == ["human", "ai"]
    assert result["messages"][-1].content == "agg: answer 2"


def test_moa_as_a_chat_model_inside_a_users_node() -> None:
    llm = MoAChatModel(proposers=[fake("a")], aggregator=fake("agg"), layers=2)

    def call_model(state: MessagesState) -> dict:
        return {"messages": [llm.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("call_model", call_model)
    builder.add_edge(START, "call_model")
    result = builder.compile().invoke({"messages": [HumanMessage("q")]})
    assert result["messages"][-1].content == "agg: answer 1"


async def test_concurrent_calls_do_not_share_state() -> None:
    llm = MoAChatModel(proposers=[fake("a", delay=0.01)], aggregator=fake("agg"), layers=2)
    results = await asyncio.gather(*(llm.ainvoke(f"question {i}") for i in range(20)))
    assert len({r.content for r in results}) == 20
    for i, result in enumerate(results):
        assert len(result.response_metadata["proposals"][0]) == 1
        assert result.usage_metadata["total_tokens"] == 16, i


def test_every_field_is_mapped_to_the_engine_or_marked_ensemble_only() -> None:
    from langchain_core.language_models import BaseChatModel

    from langchain_moa.chat_model import COMBINED_FIELDS, ENGINE_FIELDS, ENSEMBLE_FIELDS

    own = set(MoAChatModel.model_fields) - set(BaseChatModel.model_fields)
    groups = [set(ENGINE_FIELDS), set(COMBINED_FIELDS), set(ENSEMBLE_FIELDS)]
    assert own == set().union(*groups), "a field is neither mapped nor marked ensemble-only"
    assert sum(len(g) for g in groups) == len(own), "a field is listed twice"


def test_the_readme_configuration_table_lists_every_field() -> None:
    from pathlib import Path

    from langchain_core.language_models import BaseChatModel

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    own = set(MoAChatModel.model_fields) - set(BaseChatModel.model_fields)
    missing = sorted(name for name in own if f"`{name}`" not in table)
    assert missing == []


@pytest.fixture
def global_cache() -> Iterator[InMemoryCache]:
    cache = InMemoryCache()
    set_llm_cache(cache)
    try:
        yield cache
    finally:
        set_llm_cache(None)


@pytest.mark.parametrize("where", ["model", "global"])
def test_a_model_repeated_in_a_layer_samples_afresh_and_its_first_use_reads_the_cache(
    where: str, request: pytest.FixtureRequest
) -> None:
    """Self-MoA: repeats of one model skip the LLM cache; the first use keeps it."""
    if where == "global":
        request.getfixturevalue("global_cache")
        sampler = RecordingChatModel(name="a")
    else:
        sampler = RecordingChatModel(name="a", cache=InMemoryCache())
    # cache=False: the ensemble's own answer must not come from the global cache.
    llm = MoAChatModel(proposers=[sampler, sampler], aggregator=fake("agg"), layers=2, cache=False)

    def texts() -> list[str]:
        return [p["text"] for p in llm.invoke("q").response_metadata["proposals"][0]]

    first = texts()  # the two run in parallel: either may be called first
    assert sorted(first) == ["a: answer 1", "a: answer 2"]
    assert texts() == [first[0], "a: answer 3"]
    assert len(sampler.received) == 3


def test_the_graph_is_named_for_traces_and_parent_graphs() -> None:
    assert MoAChatModel(proposers=[fake("a")], aggregator=fake("agg")).graph.name == (
        "mixture_of_agents"
    )
