"""Streaming switches, progress events and the caller's run, with in-process fakes."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import RunnableConfig

from langchain_moa import PROGRESS_EVENT, MoAChatModel
from tests.unit_tests.fakes import RecordingChatModel, Runs


def ensemble(delay: float = 0.0, **kwargs: Any) -> MoAChatModel:
    return MoAChatModel(
        proposers=[RecordingChatModel(name="a", delay=delay), RecordingChatModel(name="b")],
        aggregator=RecordingChatModel(name="agg"),
        layers=2,
        **kwargs,
    )


class Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def test_streaming_true_streams_invoke_to_callbacks() -> None:
    handler = Tokens()
    result = ensemble(streaming=True).invoke("q", config={"callbacks": [handler]})
    assert result.content == "agg: answer 1"
    assert "".join(handler.tokens) == "agg: answer 1"
    assert len([t for t in handler.tokens if t]) > 1
    assert result.usage_metadata["total_tokens"] == 24


def test_disable_streaming_yields_one_whole_message() -> None:
    chunks = list(ensemble(disable_streaming=True).stream("q"))
    assert len(chunks) == 1
    assert chunks[0].content == "agg: answer 1"


async def test_progress_arrives_in_astream_events() -> None:
    events = [
        event
        async for event in ensemble(delay=0.05).astream_events("q", version="v2")
        if event["event"] == "on_custom_event" and event["name"] == PROGRESS_EVENT
    ]
    kinds = [e["data"]["kind"] for e in events]
    assert kinds[0] == "layer_started"
    assert kinds.count("proposer_finished") == 2
    assert kinds[-2:] == ["layer_finished", "aggregation_started"]
    finished = [e["data"]["proposal"] for e in events if e["data"]["kind"] == "proposer_finished"]
    assert {p["model"] for p in finished} == {"a", "b"}
    assert all(p["usage"]["total_tokens"] == 8 for p in finished)
    (slow,) = [p["latency_s"] for p in finished if p["model"] == "a"]
    assert 0.05 <= slow < 30  # "a" takes 0.05 s; a busy machine may add a lot


def test_progress_reports_failures() -> None:
    seen: list[dict[str, Any]] = []

    class Progress(BaseCallbackHandler):
        def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
            if name == PROGRESS_EVENT:
                seen.append(data)

    llm = MoAChatModel(
        proposers=[RecordingChatModel(name="a"), RecordingChatModel(name="down", fail=True)],
        aggregator=RecordingChatModel(name="agg"),
        layers=2,
    )
    llm.invoke("q", config={"callbacks": [Progress()]})
    failed = [
        e["proposal"] for e in seen if e["kind"] == "proposer_finished" and e["proposal"]["error"]
    ]
    assert [p["model"] for p in failed] == ["down"]
    assert {"layer": 1, "succeeded": 1, "failed": 1, "kind": "layer_finished"} in seen


# -- a call keeps the caller's run, callbacks and stop -----------------------------------


def traced_ensemble() -> tuple[MoAChatModel, RecordingChatModel, RecordingChatModel]:
    proposer, aggregator = RecordingChatModel(name="p"), RecordingChatModel(name="agg")
    llm = MoAChatModel(proposers=[proposer], aggregator=aggregator, layers=2, inner_callbacks="all")
    return llm, proposer, aggregator


def test_stream_runs_under_the_callers_run_id_with_inner_runs_nested() -> None:
    llm, proposer, aggregator = traced_ensemble()
    runs, run_id = Runs(), uuid4()
    chunks = list(llm.stream("q", config={"callbacks": [runs], "run_id": run_id}, stop=["END"]))
    assert "".join(str(c.content) for c in chunks) == "agg: answer 1"
    assert runs.chat_models[0] == run_id  # the ensemble's own run, as the caller named it
    assert runs.parent[run_id] is None
    assert len(runs.inner_model_runs_of(run_id)) == 2  # the proposer's and the aggregator's
    assert (proposer.stops, aggregator.stops) == ([None], [["END"]])


async def test_astream_runs_under_the_callers_run_id_with_inner_runs_nested() -> None:
    llm, proposer, aggregator = traced_ensemble()
    runs, run_id = Runs(), uuid4()
    config: RunnableConfig = {"callbacks": [runs], "run_id": run_id}
    chunks = [chunk async for chunk in llm.astream("q", config=config, stop=["END"])]
    assert "".join(str(c.content) for c in chunks) == "agg: answer 1"
    assert runs.chat_models[0] == run_id
    assert runs.parent[run_id] is None
    assert len(runs.inner_model_runs_of(run_id)) == 2
    assert (proposer.stops, aggregator.stops) == ([None], [["END"]])


def test_v3_event_stream_nests_inner_runs_and_applies_stop() -> None:
    # stream_events(version="v3") hands _stream its run manager directly.
    llm, proposer, aggregator = traced_ensemble()
    runs = Runs()
    stream = llm.stream_events("q", version="v3", stop=["END"], config={"callbacks": [runs]})
    assert stream.output.text == "agg: answer 1"
    (root,) = [run_id for run_id, parent in runs.parent.items() if parent is None]
    assert len(runs.inner_model_runs_of(root)) == 2
    assert (proposer.stops, aggregator.stops) == ([None], [["END"]])


async def test_async_v3_event_stream_nests_inner_runs_and_applies_stop() -> None:
    llm, proposer, aggregator = traced_ensemble()
    runs = Runs()
    stream = await llm.astream_events("q", version="v3", stop=["END"], config={"callbacks": [runs]})
    assert (await stream).text == "agg: answer 1"
    (root,) = [run_id for run_id, parent in runs.parent.items() if parent is None]
    assert len(runs.inner_model_runs_of(root)) == 2
    assert (proposer.stops, aggregator.stops) == ([None], [["END"]])


@pytest.mark.parametrize("is_async", [False, True], ids=["invoke", "ainvoke"])
async def test_invoke_runs_under_the_callers_run_id_with_inner_runs_nested(is_async: bool) -> None:
    llm, proposer, aggregator = traced_ensemble()
    runs, run_id = Runs(), uuid4()
    config: RunnableConfig = {"callbacks": [runs], "run_id": run_id}
    if is_async:
        result = await llm.ainvoke("q", config=config, stop=["END"])
    else:
        result = llm.invoke("q", config=config, stop=["END"])
    assert result.content == "agg: answer 1"
    # The answer is the ensemble's message, named after its run, not the aggregator's.
    assert result.id is not None
    assert str(run_id) in result.id
    assert runs.chat_models[0] == run_id
    assert runs.parent[run_id] is None
    assert len(runs.inner_model_runs_of(run_id)) == 2
    assert (proposer.stops, aggregator.stops) == ([None], [["END"]])


# -- what LangSmith and LangGraph see of the ensemble's own run -----------------------------


class Starts(BaseCallbackHandler):
    """Records the metadata of every chat model run."""

    def __init__(self) -> None:
        self.metadata: dict[UUID, dict[str, Any]] = {}

    def on_chat_model_start(
        self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any
    ) -> None:
        self.metadata[run_id] = dict(kwargs.get("metadata") or {})


def ls_params_of_the_ensembles_run(llm: MoAChatModel, **call: Any) -> dict[str, Any]:
    starts, run_id = Starts(), uuid4()
    llm.invoke("q", config={"callbacks": [starts], "run_id": run_id}, **call)
    params = {k: v for k, v in starts.metadata[run_id].items() if k.startswith("ls_")}
    params.pop("ls_integration", None)  # added by langchain-core, not by the ensemble
    return params


def test_the_ensembles_run_names_its_provider_model_and_settings_for_langsmith() -> None:
    assert ls_params_of_the_ensembles_run(ensemble()) == {
        "ls_provider": "langchain-moa",
        "ls_model_name": "mixture-of-agents",
        "ls_model_type": "chat",
    }
    configured = ensemble(model="my-moa", temperature=0.3, max_tokens=77, stop_sequences=["X"])
    assert ls_params_of_the_ensembles_run(configured) == {
        "ls_provider": "langchain-moa",
        "ls_model_name": "my-moa",
        "ls_model_type": "chat",
        "ls_temperature": 0.3,
        "ls_max_tokens": 77,
        "ls_stop": ["X"],
    }
    # Per-call settings are what the run used.
    per_call = ls_params_of_the_ensembles_run(ensemble(), temperature=0.9, max_tokens=5, stop=["Y"])
    assert (per_call["ls_temperature"], per_call["ls_max_tokens"], per_call["ls_stop"]) == (
        0.9,
        5,
        ["Y"],
    )


def streamed_under_messages_mode(llm: MoAChatModel, runs: Runs) -> tuple[list[Any], UUID]:
    """Invoke ``llm`` in a LangGraph node, streamed with ``stream_mode="messages"``."""
    from langgraph.graph import END, START, MessagesState, StateGraph

    def node(state: MessagesState) -> dict[str, Any]:
        return {"messages": [llm.invoke(state["messages"])]}

    graph = StateGraph(MessagesState).add_node("moa", node)
    graph = graph.add_edge(START, "moa").add_edge("moa", END).compile()
    chunks = [
        chunk
        for chunk, _ in graph.stream(
            {"messages": [("user", "q")]}, config={"callbacks": [runs]}, stream_mode="messages"
        )
    ]
    ensemble_run = runs.chat_models[0]  # the ensemble starts before its inner models
    return chunks, ensemble_run


def test_an_invoke_in_a_graph_streams_its_answer_and_nests_its_inner_runs() -> None:
    # LangGraph's messages mode makes LangChain stream the invoke implicitly; the
    # ensemble's run must stay the parent of the inner models' runs.
    llm, _, _ = traced_ensemble()
    runs = Runs()
    chunks, ensemble_run = streamed_under_messages_mode(llm, runs)
    assert "".join(str(c.content) for c in chunks) == "agg: answer 1"
    assert len([c for c in chunks if c.content]) > 1  # token by token, not one message
    assert len(runs.inner_model_runs_of(ensemble_run)) == 2
