"""The chat-model contract on every path, over HTTP against the simulator (issue 11).

Copies and changed settings, streamed usage, the cache key, proposers without
tools, agents, the graph on its own and as a subgraph, pickling and token
counting, wrapped models and per-call arguments. Inner models are ``ChatOpenAI``
talking to the simulator; in-process fakes stand in only where a model must
lack a capability (``ChatOpenAI`` can be neither pickled nor deep-copied).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import functools
import itertools
import json
import operator
import pickle
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.structured_output import ProviderStrategy
from langchain.chat_models import init_chat_model
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import get_usage_metadata_callback
from langchain_core.globals import get_llm_cache, set_llm_cache
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, ToolMessage
from langchain_core.runnables import Runnable
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph
from pydantic import BaseModel

from langchain_moa import MoAChatModel
from langchain_moa.testing import ModelBehavior, OpenAISimulator
from tests.simulated_usage import aggregator_usage, counts, moa_lite_usage

QUESTION = "Why is the sky blue?"
WEATHER_QUESTION = "What is the weather in 'Paris'? Use get_weather."


def ensemble(sim: OpenAISimulator, tag: str, **settings: Any) -> MoAChatModel:
    settings.setdefault("layers", 2)
    return MoAChatModel(
        proposers=[sim.chat_model(f"{tag}-p0"), sim.chat_model(f"{tag}-p1")],
        aggregator=sim.chat_model(f"{tag}-agg"),
        **settings,
    )


# How many requests each model named "{tag}-..." received.
def requested(sim: OpenAISimulator, tag: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for request in sim.requests:
        if request.model.startswith(f"{tag}-"):
            counts[request.model] = counts.get(request.model, 0) + 1
    return counts


def configurable(sim: OpenAISimulator, model: str) -> Runnable:
    return init_chat_model(
        model=model,
        model_provider="openai",
        base_url=sim.base_url,
        api_key="x",
        configurable_fields="any",
        max_retries=0,
    )


# function(*args) in a thread: a call that takes longer fails the test, not hangs it.
def within(seconds: float, function: Callable[..., Any], *args: Any) -> Any:
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return executor.submit(function, *args).result(timeout=seconds)
    finally:
        executor.shutdown(wait=False)


def fake(name: str) -> FakeListChatModel:
    return FakeListChatModel(responses=[f"{name} says hi"], name=name)


class WeatherSchema(BaseModel):
    """The weather in a city."""

    city: str
    forecast: str


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"sunny and 21 degrees in {city}"


# -- 1. copies and changed settings follow the new settings ---------------------------


def test_model_copy_with_an_update_after_a_run_calls_the_new_line_up(
    openai_simulator: OpenAISimulator,
) -> None:
    sim = openai_simulator
    llm = ensemble(sim, "ct-mc")
    llm.invoke(QUESTION)
    copied = llm.model_copy(
        update={
            "proposers": [sim.chat_model("ct-mc-new-p")],
            "aggregator": sim.chat_model("ct-mc-new-agg"),
        }
    )
    result = copied.invoke(QUESTION)
    assert (
        result.content == f"ct-mc-new-agg read 1 references [ct-mc-new-p] and answers: {QUESTION}"
    )
    assert requested(sim, "ct-mc") == {
        "ct-mc-p0": 1,
        "ct-mc-p1": 1,
        "ct-mc-agg": 1,
        "ct-mc-new-p": 1,
        "ct-mc-new-agg": 1,
    }
    assert copied._identifying_params != llm._identifying_params
    assert copied._get_llm_string() != llm._get_llm_string()
    # The original keeps its own line-up.
    llm.invoke(QUESTION)
    assert requested(sim, "ct-mc")["ct-mc-agg"] == 2
    assert requested(sim, "ct-mc")["ct-mc-new-agg"] == 1


def test_setting_attributes_after_a_run_takes_effect(openai_simulator: OpenAISimulator) -> None:
    sim = openai_simulator
    llm = ensemble(sim, "ct-set")
    llm.invoke(QUESTION)
    before = (dict(llm._identifying_params), llm._get_llm_string())
    llm.proposers = [sim.chat_model("ct-set-new-p")]
    llm.aggregator = sim.chat_model("ct-set-new-agg")
    llm.aggregator_prompt = "Merge these drafts.\nResponses from models:"
    result = llm.invoke(QUESTION)
    assert (
        result.content == f"ct-set-new-agg read 1 references [ct-set-new-p] and answers: {QUESTION}"
    )
    assert requested(sim, "ct-set") == {
        "ct-set-p0": 1,
        "ct-set-p1": 1,
        "ct-set-agg": 1,
        "ct-set-new-p": 1,
        "ct-set-new-agg": 1,
    }
    (request,) = sim.requests_for("ct-set-new-agg")
    assert request.body["messages"][0]["content"].startswith("Merge these drafts.")
    assert llm._identifying_params != before[0]
    assert llm._get_llm_string() != before[1]


def test_deepcopy_after_a_run_gives_an_independent_working_ensemble() -> None:
    # ChatOpenAI cannot be deep-copied (its HTTP client holds locks): fakes here.
    llm = MoAChatModel(proposers=[fake("a"), fake("b")], aggregator=fake("agg"), layers=2)
    assert llm.invoke(QUESTION).content == "agg says hi"
    copied = copy.deepcopy(llm)
    assert copied.invoke(QUESTION).content == "agg says hi"
    copied.aggregator = fake("other")
    assert copied.invoke(QUESTION).content == "other says hi"
    assert copied._get_llm_string() != llm._get_llm_string()
    assert llm.invoke(QUESTION).content == "agg says hi"


# -- 2. streamed usage includes the aggregator's tokens -------------------------------


def usage_ensemble(sim: OpenAISimulator, tag: str) -> MoAChatModel:
    # A custom base_url: langchain_openai does not ask for usage in streams.
    aggregator = ChatOpenAI(base_url=sim.base_url, api_key="x", model=f"{tag}-agg", max_retries=0)
    return MoAChatModel(
        proposers=[sim.chat_model(f"{tag}-p0"), sim.chat_model(f"{tag}-p1")],
        aggregator=aggregator,
        layers=2,
    )


def test_streamed_usage_counts_an_aggregator_that_does_not_ask_for_it(
    openai_simulator: OpenAISimulator,
) -> None:
    llm = usage_ensemble(openai_simulator, "ct-su")
    with get_usage_metadata_callback() as invoked:
        expected = llm.invoke(QUESTION).usage_metadata
    with get_usage_metadata_callback() as streamed:
        total = functools.reduce(operator.add, llm.stream(QUESTION))
    # Worked out from the simulator's word counts, not from the product's invoke.
    assert counts(expected) == moa_lite_usage(QUESTION, proposers=2)
    assert total.usage_metadata == expected
    assert streamed.usage_metadata == invoked.usage_metadata == {"mixture-of-agents": expected}
    assert counts(total.response_metadata["aggregator"]["usage"]) == aggregator_usage(QUESTION, 2)


async def test_astreamed_usage_counts_an_aggregator_that_does_not_ask_for_it(
    openai_simulator: OpenAISimulator,
) -> None:
    llm = usage_ensemble(openai_simulator, "ct-asu")
    with get_usage_metadata_callback() as invoked:
        expected = (await llm.ainvoke(QUESTION)).usage_metadata
    with get_usage_metadata_callback() as streamed:
        chunks = [chunk async for chunk in llm.astream(QUESTION)]
    assert counts(expected) == moa_lite_usage(QUESTION, proposers=2)
    assert functools.reduce(operator.add, chunks).usage_metadata == expected
    assert streamed.usage_metadata == invoked.usage_metadata == {"mixture-of-agents": expected}


# -- 3. the cache key -------------------------------------------------------------------

SETTING_CHANGES = [
    pytest.param({}, {"max_reference_chars": 40}, id="max_reference_chars"),
    pytest.param(
        {"aggregation": "rank"},
        {"aggregation": "rank", "ranker_prompt": "Pick the best one; answer its number."},
        id="ranker_prompt",
    ),
    pytest.param({}, {"aggregator_prompt": "Merge these drafts."}, id="aggregator_prompt"),
    pytest.param(
        {},
        {"reference_format": "delimited"},
        id="reference_format",
        marks=pytest.mark.skipif(
            "reference_format" not in MoAChatModel.model_fields,
            reason="this MoAChatModel has no reference_format setting",
        ),
    ),
    pytest.param({}, {"min_proposers": 2}, id="min_proposers"),
    pytest.param({}, {"proposer_timeout": 30.0}, id="proposer_timeout"),
    pytest.param({}, {"layer_deadline": 30.0}, id="layer_deadline"),
    pytest.param({}, {"aggregator_timeout": 30.0}, id="aggregator_timeout"),
    pytest.param({}, {"stop_sequences": ["zzz"]}, id="stop_sequences"),
    pytest.param({}, {"layers": 3}, id="layers"),
]


@pytest.mark.parametrize(("base", "change"), SETTING_CHANGES)
def test_ensembles_differing_in_one_setting_do_not_share_cache_entries(
    openai_simulator: OpenAISimulator,
    base: dict[str, Any],
    change: dict[str, Any],
    request: pytest.FixtureRequest,
) -> None:
    sim = openai_simulator
    tag = f"ct-key-{request.node.callspec.id}"
    cache = InMemoryCache()
    first = ensemble(sim, tag, cache=cache, **base)
    second = ensemble(sim, tag, cache=cache, **{**base, **change})
    assert first._get_llm_string() != second._get_llm_string()
    first.invoke(QUESTION)
    calls = requested(sim, tag)[f"{tag}-agg"]
    second.invoke(QUESTION)
    assert requested(sim, tag)[f"{tag}-agg"] == calls + 1


def test_the_fallback_aggregator_is_part_of_the_cache_key(
    openai_simulator: OpenAISimulator,
) -> None:
    sim = openai_simulator
    plain = ensemble(sim, "ct-key-fb")
    with_fallback = ensemble(sim, "ct-key-fb", fallback_aggregator=sim.chat_model("ct-key-fb-fb"))
    other_fallback = ensemble(sim, "ct-key-fb", fallback_aggregator=sim.chat_model("ct-key-fb-x"))
    keys = {m._get_llm_string() for m in (plain, with_fallback, other_fallback)}
    assert len(keys) == 3


def test_a_degraded_answer_is_not_served_from_the_cache(openai_simulator: OpenAISimulator) -> None:
    sim = openai_simulator
    sim.set_behavior("ct-dg-p1", ModelBehavior(error_status=500))
    llm = ensemble(sim, "ct-dg", cache=InMemoryCache(), max_retries=0)
    first = llm.invoke(QUESTION)
    assert first.response_metadata["degraded"] is True
    second = llm.invoke(QUESTION)
    assert requested(sim, "ct-dg") == {"ct-dg-p0": 2, "ct-dg-p1": 2, "ct-dg-agg": 2}
    assert second.response_metadata["degraded"] is True


def test_a_healthy_answer_is_served_from_the_cache(openai_simulator: OpenAISimulator) -> None:
    sim = openai_simulator
    llm = ensemble(sim, "ct-hc", cache=InMemoryCache())
    first = llm.invoke(QUESTION)
    assert first.response_metadata["degraded"] is False
    second = llm.invoke(QUESTION)
    assert second.content == first.content
    assert requested(sim, "ct-hc") == {"ct-hc-p0": 1, "ct-hc-p1": 1, "ct-hc-agg": 1}


@pytest.fixture
def global_cache() -> Iterator[InMemoryCache]:
    previous = get_llm_cache()
    cache = InMemoryCache()
    set_llm_cache(cache)
    try:
        yield cache
    finally:
        set_llm_cache(previous)


@pytest.mark.usefixtures("global_cache")
def test_self_moa_samples_each_reach_the_server_under_a_global_cache(
    openai_simulator: OpenAISimulator,
) -> None:
    sim = openai_simulator
    sampled = sim.chat_model("ct-self-m")
    # One call at a time: each sample would find the previous one in the cache.
    llm = MoAChatModel(
        proposers=[sampled, sampled, sampled],
        aggregator=sim.chat_model("ct-self-agg"),
        layers=2,
        max_concurrency=1,
    )
    result = llm.invoke(QUESTION)
    assert len(sim.requests_for("ct-self-m")) == 3
    assert [p["error"] for p in result.response_metadata["proposals"][0]] == [None] * 3


# -- 4. a proposer that cannot take tools ----------------------------------------------


class ChatOpenAIWithoutTools(ChatOpenAI):
    def bind_tools(self, *args: Any, **kwargs: Any) -> Any:
        msg = "this model cannot take tools"
        raise NotImplementedError(msg)


def test_a_proposer_without_tool_support_answers_without_the_tools(
    openai_simulator: OpenAISimulator,
) -> None:
    sim = openai_simulator
    toolless = ChatOpenAIWithoutTools(
        base_url=sim.base_url, api_key="x", model="ct-nt-plain", max_retries=0
    )
    llm = MoAChatModel(
        proposers=[sim.chat_model("ct-nt-p0"), toolless],
        aggregator=sim.chat_model("ct-nt-agg"),
        layers=2,
    )
    result = llm.bind_tools([get_weather]).invoke(WEATHER_QUESTION)
    assert result.tool_calls[0]["name"] == "get_weather"
    assert result.tool_calls[0]["args"] == {"city": "Paris"}
    assert result.response_metadata["degraded"] is False
    (plain,) = sim.requests_for("ct-nt-plain")
    assert "tools" not in plain.body
    (other,) = sim.requests_for("ct-nt-p0")
    assert other.body["tools"][0]["function"]["name"] == "get_weather"
    assert other.body["tool_choice"] == "none"
    (aggregated,) = sim.requests_for("ct-nt-agg")
    assert aggregated.body["tools"][0]["function"]["name"] == "get_weather"
    assert "ct-nt-plain answers:" in aggregated.body["messages"][0]["content"]


async def test_a_fake_proposer_without_bind_tools_is_kept_async(
    openai_simulator: OpenAISimulator,
) -> None:
    sim = openai_simulator
    generic = GenericFakeChatModel(messages=itertools.repeat(AIMessage("generic says sunny")))
    llm = MoAChatModel(
        proposers=[sim.chat_model("ct-gf-p0"), generic],
        aggregator=sim.chat_model("ct-gf-agg"),
        layers=2,
    )
    result = await llm.bind_tools([get_weather]).ainvoke(WEATHER_QUESTION)
    assert result.tool_calls[0]["name"] == "get_weather"
    texts = [p["text"] for p in result.response_metadata["proposals"][0]]
    assert texts[1] == "generic says sunny"
    assert result.response_metadata["degraded"] is False
    (aggregated,) = sim.requests_for("ct-gf-agg")
    assert "generic says sunny" in aggregated.body["messages"][0]["content"]


# -- 5. agents ---------------------------------------------------------------------------


def run_weather_agent(llm: MoAChatModel, **agent_settings: Any) -> dict[str, Any]:
    agent = create_agent(llm, tools=[get_weather], **agent_settings)
    # A low recursion limit: a looping agent fails fast instead of hanging.
    return agent.invoke({"messages": [HumanMessage(WEATHER_QUESTION)]}, {"recursion_limit": 12})


def test_create_agent_with_a_provider_strategy_response_format(
    openai_simulator: OpenAISimulator,
) -> None:
    sim = openai_simulator
    llm = ensemble(sim, "ct-agent")
    result = run_weather_agent(llm, response_format=ProviderStrategy(WeatherSchema))
    assert result["structured_response"] == WeatherSchema(
        city="Paris", forecast="simulated forecast"
    )
    tool_results = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert [m.content for m in tool_results] == ["sunny and 21 degrees in Paris"]
    for request in sim.requests_for("ct-agent-agg"):
        assert request.body["response_format"]["type"] == "json_schema"
        assert request.body["tools"][0]["function"]["name"] == "get_weather"


def test_profile_is_the_aggregators_and_create_agent_picks_provider_strategy(
    openai_simulator: OpenAISimulator,
) -> None:
    sim = openai_simulator
    profile = {"structured_output": True, "tool_calling": True}
    aggregator = sim.chat_model("ct-prof-agg", profile=profile)
    llm = MoAChatModel(
        proposers=[sim.chat_model("ct-prof-p0"), sim.chat_model("ct-prof-p1")],
        aggregator=aggregator,
        layers=2,
    )
    assert llm.profile == aggregator.profile
    result = run_weather_agent(llm, response_format=WeatherSchema)
    assert result["structured_response"] == WeatherSchema(
        city="Paris", forecast="simulated forecast"
    )
    # The provider's structured output, not a tool named after the schema.
    final = sim.requests_for("ct-prof-agg")[-1].body
    assert final["response_format"]["type"] == "json_schema"
    assert [t["function"]["name"] for t in final["tools"]] == ["get_weather"]


# -- 6. the graph on its own and as a subgraph --------------------------------------------


def deadline_ensemble(sim: OpenAISimulator, tag: str) -> MoAChatModel:
    sim.set_behavior(f"{tag}-hung", ModelBehavior(hang=True))
    return MoAChatModel(
        proposers=[
            sim.chat_model(f"{tag}-p0"),
            sim.chat_model(f"{tag}-p1"),
            sim.chat_model(f"{tag}-hung"),
        ],
        aggregator=sim.chat_model(f"{tag}-agg"),
        layers=2,
        layer_deadline=0.5,
        min_proposers=2,
    )


def assert_ensemble_answer(answer: Any, expected: AIMessage, tag: str) -> None:
    assert isinstance(answer, AIMessage)
    assert answer.content == f"{tag}-agg read 2 references [{tag}-p0, {tag}-p1] and answers: q"
    assert answer.usage_metadata == expected.usage_metadata
    proposals = answer.response_metadata["proposals"]
    assert [p["model"] for p in proposals[0]] == [f"{tag}-p0", f"{tag}-p1", f"{tag}-hung"]
    assert proposals[0][2]["error"] == (
        "LayerDeadlineError: cut at the layer deadline (0.5s), quorum met"
    )


# The progress events and the final state of a run of graph, in at most 5 s.
def streamed(graph: Runnable) -> tuple[list[Any], dict[str, Any]]:
    def run() -> list[Any]:
        items = graph.stream(
            {"messages": [HumanMessage("q")]}, stream_mode=["custom", "values"], subgraphs=True
        )
        return list(items)

    items = within(5, run)
    progress = [payload for _, mode, payload in items if mode == "custom"]
    final = next(payload for ns, mode, payload in reversed(items) if mode == "values" and not ns)
    return progress, final


def assert_plain_progress(progress: list[Any]) -> None:
    assert progress
    assert all(isinstance(event, dict) for event in progress)
    json.dumps(progress)
    kinds = {event["kind"] for event in progress}
    assert {"layer_started", "proposer_finished", "layer_finished"} <= kinds


def test_the_graph_alone_honours_layer_deadline_and_answers_like_invoke(
    openai_simulator: OpenAISimulator,
) -> None:
    llm = deadline_ensemble(openai_simulator, "ct-ga")
    expected = llm.invoke("q")
    # The hung proposer is cut: two proposals, then the aggregator.
    assert counts(expected.usage_metadata) == moa_lite_usage("q", proposers=2)
    every_call = [
        *expected.response_metadata["proposals"][0],
        expected.response_metadata["aggregator"],
    ]
    assert expected.usage_metadata["total_tokens"] == sum(
        call["usage"]["total_tokens"] for call in every_call if call["usage"]
    )
    started = time.perf_counter()
    state = within(5, llm.graph.invoke, {"messages": [HumanMessage("q")]})
    assert time.perf_counter() - started < 5
    assert_ensemble_answer(state["messages"][-1], expected, "ct-ga")
    progress, final = streamed(llm.graph)
    assert_plain_progress(progress)
    assert_ensemble_answer(final["messages"][-1], expected, "ct-ga")


def test_the_graph_as_a_subgraph_honours_layer_deadline_and_streams_plain_dicts(
    openai_simulator: OpenAISimulator,
) -> None:
    llm = deadline_ensemble(openai_simulator, "ct-gs")
    expected = llm.invoke("q")
    builder = StateGraph(MessagesState)
    builder.add_node("moa", llm.graph)
    builder.add_edge(START, "moa")
    builder.add_edge("moa", END)
    progress, final = streamed(builder.compile())
    assert_plain_progress(progress)
    assert_ensemble_answer(final["messages"][-1], expected, "ct-gs")


async def test_the_graph_as_an_async_subgraph_honours_layer_deadline(
    openai_simulator: OpenAISimulator,
) -> None:
    llm = deadline_ensemble(openai_simulator, "ct-gsa")
    expected = await llm.ainvoke("q")
    builder = StateGraph(MessagesState)
    builder.add_node("moa", llm.graph)
    builder.add_edge(START, "moa")
    outer = builder.compile()
    state = await asyncio.wait_for(outer.ainvoke({"messages": [HumanMessage("q")]}), 5)
    assert_ensemble_answer(state["messages"][-1], expected, "ct-gsa")


def test_progress_of_an_invoke_in_a_users_node_streams_as_moa_progress_dicts(
    openai_simulator: OpenAISimulator,
) -> None:
    llm = ensemble(openai_simulator, "ct-node")

    def ask(state: MessagesState) -> dict[str, Any]:
        return {"messages": [llm.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    events = list(
        builder.compile().stream({"messages": [HumanMessage(QUESTION)]}, stream_mode="custom")
    )
    assert events
    assert all(isinstance(e, dict) and set(e) == {"moa_progress"} for e in events)
    json.dumps(events)
    kinds = [e["moa_progress"]["kind"] for e in events]
    assert kinds[0] == "layer_started"
    assert kinds.count("proposer_finished") == 2
    assert "aggregation_started" in kinds


# -- 7. pickling and token counting --------------------------------------------------------


def test_an_ensemble_pickles_after_its_first_call() -> None:
    # ChatOpenAI cannot be pickled at all (its HTTP client holds locks): fakes here.
    llm = MoAChatModel(proposers=[fake("a"), fake("b")], aggregator=fake("agg"), layers=2)
    assert llm.invoke(QUESTION).content == "agg says hi"
    restored = pickle.loads(pickle.dumps(llm))
    assert restored.invoke(QUESTION).content == "agg says hi"
    assert restored._get_llm_string() == llm._get_llm_string()


def test_get_num_tokens_uses_the_aggregators_counter(openai_simulator: OpenAISimulator) -> None:
    aggregator = openai_simulator.chat_model(
        "ct-tok-agg", custom_get_token_ids=lambda text: [1] * len(text.split())
    )
    llm = MoAChatModel(
        proposers=[openai_simulator.chat_model("ct-tok-p0")], aggregator=aggregator, layers=2
    )
    assert llm.get_num_tokens("one two three four five") == 5
    assert llm.get_token_ids("one two three") == [1, 1, 1]


# -- 8. wrapped models ---------------------------------------------------------------------


@pytest.fixture
def no_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        yield


@pytest.mark.usefixtures("no_warnings")
def test_wrapped_proposers_and_aggregator_all_answer(openai_simulator: OpenAISimulator) -> None:
    sim = openai_simulator
    llm = MoAChatModel(
        proposers=[
            sim.chat_model("ct-wr-bound").bind(temperature=0.1),
            sim.chat_model("ct-wr-retry").with_retry(stop_after_attempt=2),
            configurable(sim, "ct-wr-conf"),
        ],
        aggregator=sim.chat_model("ct-wr-agg").bind(temperature=0.2),
        layers=2,
    )
    result = llm.invoke(QUESTION)
    assert result.content == (
        f"ct-wr-agg read 3 references [ct-wr-bound, ct-wr-retry, ct-wr-conf] "
        f"and answers: {QUESTION}"
    )
    assert result.response_metadata["degraded"] is False
    assert sim.requests_for("ct-wr-bound")[0].body["temperature"] == 0.1
    assert sim.requests_for("ct-wr-agg")[0].body["temperature"] == 0.2


@pytest.mark.usefixtures("no_warnings")
async def test_a_configurable_proposer_and_aggregator_answer_async(
    openai_simulator: OpenAISimulator,
) -> None:
    sim = openai_simulator
    llm = MoAChatModel(
        proposers=[sim.chat_model("ct-wa-p0"), configurable(sim, "ct-wa-conf")],
        aggregator=configurable(sim, "ct-wa-agg"),
        layers=2,
    )
    result = await llm.ainvoke(QUESTION)
    assert (
        result.content
        == f"ct-wa-agg read 2 references [ct-wa-p0, ct-wa-conf] and answers: {QUESTION}"
    )
    assert result.response_metadata["degraded"] is False


WRAPPED_AGGREGATORS = {
    "bind": lambda sim, name: sim.chat_model(name).bind(temperature=0.2),
    "with_retry": lambda sim, name: sim.chat_model(name).with_retry(stop_after_attempt=2),
    "configurable": configurable,
}


@pytest.mark.usefixtures("no_warnings")
@pytest.mark.parametrize("wrapper", list(WRAPPED_AGGREGATORS))
def test_tools_bound_to_the_ensemble_reach_a_wrapped_aggregator(
    openai_simulator: OpenAISimulator, wrapper: str
) -> None:
    sim = openai_simulator
    name = f"ct-wt-{wrapper}-agg"
    llm = MoAChatModel(
        proposers=[sim.chat_model(f"ct-wt-{wrapper}-p0")],
        aggregator=WRAPPED_AGGREGATORS[wrapper](sim, name),
        layers=2,
    )
    result = llm.bind_tools([get_weather]).invoke(WEATHER_QUESTION)
    assert result.tool_calls[0]["name"] == "get_weather"
    assert result.tool_calls[0]["args"] == {"city": "Paris"}
    (request,) = sim.requests_for(name)
    assert [t["function"]["name"] for t in request.body["tools"]] == ["get_weather"]


def test_with_retry_on_a_proposer_recovers_from_a_failure(
    openai_simulator: OpenAISimulator,
) -> None:
    sim = openai_simulator
    sim.set_behavior("ct-rt-flaky", ModelBehavior(fail_first=1))
    llm = MoAChatModel(
        proposers=[
            sim.chat_model("ct-rt-flaky").with_retry(
                stop_after_attempt=2, wait_exponential_jitter=False
            ),
            sim.chat_model("ct-rt-p1"),
        ],
        aggregator=sim.chat_model("ct-rt-agg"),
        layers=2,
        max_retries=0,  # only the wrapper retries
    )
    result = llm.invoke(QUESTION)
    assert result.response_metadata["degraded"] is False
    assert (
        result.content
        == f"ct-rt-agg read 2 references [ct-rt-flaky, ct-rt-p1] and answers: {QUESTION}"
    )
    assert len(sim.requests_for("ct-rt-flaky")) == 2


# -- 9. per-call arguments ----------------------------------------------------------------


def test_a_per_call_temperature_reaches_only_the_aggregator(
    openai_simulator: OpenAISimulator,
) -> None:
    sim = openai_simulator
    ensemble(sim, "ct-temp", temperature=0.7).invoke(QUESTION, temperature=0.3)
    assert sim.requests_for("ct-temp-agg")[-1].body["temperature"] == 0.3
    for name in ("ct-temp-p0", "ct-temp-p1"):
        assert [r.body["temperature"] for r in sim.requests_for(name)] == [0.7]


PROVIDER_ARGUMENTS = [
    pytest.param({"logprobs": True}, {"logprobs": True}, id="logprobs"),
    pytest.param({"extra_body": {"top_k": 5}}, {"top_k": 5}, id="extra_body"),
    pytest.param({"reasoning_effort": "low"}, {"reasoning_effort": "low"}, id="reasoning_effort"),
    pytest.param({"service_tier": "auto"}, {"service_tier": "auto"}, id="service_tier"),
]


@pytest.mark.parametrize(("arguments", "in_body"), PROVIDER_ARGUMENTS)
def test_provider_arguments_reach_the_aggregators_request(
    openai_simulator: OpenAISimulator,
    arguments: dict[str, Any],
    in_body: dict[str, Any],
    request: pytest.FixtureRequest,
) -> None:
    sim = openai_simulator
    tag = f"ct-arg-{request.node.callspec.id}"
    result = ensemble(sim, tag).invoke(QUESTION, **arguments)
    assert result.content.endswith(f"and answers: {QUESTION}")
    body = sim.requests_for(f"{tag}-agg")[-1].body
    assert {key: body.get(key) for key in in_body} == in_body
    for name in (f"{tag}-p0", f"{tag}-p1"):
        assert not set(in_body) & set(sim.requests_for(name)[-1].body)


def test_a_chat_message_with_the_user_role_counts_as_the_question(
    openai_simulator: OpenAISimulator,
) -> None:
    result = ensemble(openai_simulator, "ct-cm").invoke(
        [ChatMessage(role="user", content=QUESTION)]
    )
    assert (
        result.content
        == f"ct-cm-agg read 2 references [ct-cm-p0, ct-cm-p1] and answers: {QUESTION}"
    )


BAD_ARGUMENTS = [
    pytest.param("temperature", float("nan"), id="temperature-nan"),
    pytest.param("temperature", "hot", id="temperature-hot"),
    pytest.param("max_tokens", -1, id="max_tokens-negative"),
    pytest.param("seed", object(), id="seed-object"),
]


@pytest.mark.parametrize(("name", "value"), BAD_ARGUMENTS)
def test_bad_per_call_values_are_refused_before_any_request(
    openai_simulator: OpenAISimulator, name: str, value: Any, request: pytest.FixtureRequest
) -> None:
    tag = f"ct-bad-{request.node.callspec.id}"
    llm = ensemble(openai_simulator, tag)
    with pytest.raises((TypeError, ValueError), match=name):
        llm.invoke(QUESTION, **{name: value})
    assert requested(openai_simulator, tag) == {}


def test_the_profile_follows_a_new_aggregator(openai_simulator: OpenAISimulator) -> None:
    first = openai_simulator.chat_model("profile-agg-a", profile={"structured_output": False})
    second = openai_simulator.chat_model("profile-agg-b", profile={"structured_output": True})
    llm = MoAChatModel(
        proposers=[openai_simulator.chat_model("profile-p")], aggregator=first, layers=2
    )
    assert llm.profile == {"structured_output": False}
    assert llm.model_copy(update={"aggregator": second}).profile == {"structured_output": True}
    llm.aggregator = second
    assert llm.profile == {"structured_output": True}
