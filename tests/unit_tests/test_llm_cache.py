"""LangChain's LLM cache, sync and async: healthy answers are kept, degraded ones not."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig

from langchain_moa import MoAChatModel
from tests.unit_tests.fakes import RecordingChatModel, Runs


class Team:
    """An ensemble with its own cache, and a way to call it sync or async."""

    def __init__(self, *, failing_proposer: bool = False, is_async: bool) -> None:
        self.proposers = [
            RecordingChatModel(name="a"),
            RecordingChatModel(name="b", fail=failing_proposer),
        ]
        self.aggregator = RecordingChatModel(name="agg")
        self.cache = InMemoryCache()
        self.llm = MoAChatModel(
            proposers=self.proposers,
            aggregator=self.aggregator,
            layers=2,
            cache=self.cache,
            max_retries=0,
        )
        self.is_async = is_async

    async def call(self, text: str, **kwargs: Any) -> BaseMessage:
        if self.is_async:
            return await self.llm.ainvoke(text, **kwargs)
        return self.llm.invoke(text, **kwargs)

    def calls(self) -> dict[str, int]:
        """Calls that reached each inner model."""
        models = [*self.proposers, self.aggregator]
        return {m.name or "": len(m.received) for m in models}


both_apis = pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])


@both_apis
async def test_a_healthy_answer_is_served_from_the_cache(is_async: bool) -> None:
    team = Team(is_async=is_async)
    first = await team.call("q")
    second = await team.call("q")
    assert isinstance(second, AIMessage)
    assert second.content == first.content == "agg: answer 1"
    assert second.response_metadata["degraded"] is False
    assert second.usage_metadata is not None
    assert first.usage_metadata is not None
    assert second.usage_metadata["total_tokens"] == first.usage_metadata["total_tokens"] == 24
    assert team.calls() == {"a": 1, "b": 1, "agg": 1}


@both_apis
async def test_a_degraded_answer_is_not_kept(is_async: bool) -> None:
    team = Team(failing_proposer=True, is_async=is_async)
    first = await team.call("q")
    assert first.response_metadata["degraded"] is True
    second = await team.call("q")
    assert second.content == "agg: answer 2"  # asked again, not served from the cache
    assert team.calls() == {"a": 2, "b": 2, "agg": 2}
    assert team.cache._cache == {}


@both_apis
async def test_calls_differing_in_input_stop_or_arguments_are_cached_apart(
    is_async: bool,
) -> None:
    team = Team(is_async=is_async)
    await team.call("q")
    await team.call("another question")
    await team.call("q", stop=["END"])
    await team.call("q", stop=["FIN"])
    await team.call("q", max_tokens=50)
    assert team.calls() == {"a": 5, "b": 5, "agg": 5}
    assert team.aggregator.stops == [None, None, ["END"], ["FIN"], None]
    assert [k.get("max_tokens") for k in team.aggregator.call_kwargs] == [None] * 4 + [50]
    # Each of them is now kept.
    await team.call("q", stop=["FIN"])
    await team.call("q", max_tokens=50)
    assert team.calls() == {"a": 5, "b": 5, "agg": 5}


@both_apis
async def test_a_cached_ensemble_keeps_the_callers_run_and_stop(is_async: bool) -> None:
    team = Team(is_async=is_async)
    team.llm.inner_callbacks = "all"
    runs, run_id = Runs(), uuid4()
    config: RunnableConfig = {"callbacks": [runs], "run_id": run_id}
    await team.call("q", config=config, stop=["END"])
    assert runs.chat_models[0] == run_id
    assert len(runs.inner_model_runs_of(run_id)) == 3  # two proposers and the aggregator
    assert team.aggregator.stops == [["END"]]
    assert [p.stops for p in team.proposers] == [[None], [None]]
