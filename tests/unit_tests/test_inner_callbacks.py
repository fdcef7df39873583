"""Which callback handlers follow a call into the inner models, for every way of calling.

Tracers see the whole tree; other handlers see the ensemble's run only, unless
``inner_callbacks="all"``. Streaming must trace exactly what invoking traces.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import pytest
from langchain_core.callbacks import BaseCallbackHandler, get_usage_metadata_callback
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tracers.context import collect_runs
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
from langchain_core.tracers.schemas import Run

from langchain_moa import PROGRESS_EVENT, MoAChatModel
from tests.unit_tests.fakes import RecordingChatModel

WAYS = ["invoke", "ainvoke", "stream", "astream"]
INNER_CHAT_MODELS = ["aggregator · agg", "layer 1 · proposer 0 · a", "layer 2 · proposer 0 · a"]


def ensemble(**kwargs: Any) -> MoAChatModel:
    return MoAChatModel(
        proposers=[RecordingChatModel(name="a")],
        aggregator=RecordingChatModel(name="agg"),
        layers=3,
        **kwargs,
    )


async def call(llm: MoAChatModel, how: str, config: RunnableConfig) -> str:
    if how == "invoke":
        return str(llm.invoke("q", config).content)
    if how == "ainvoke":
        return str((await llm.ainvoke("q", config)).content)
    if how == "stream":
        return "".join(str(chunk.content) for chunk in llm.stream("q", config))
    return "".join([str(chunk.content) async for chunk in llm.astream("q", config)])


class Recorder(BaseCallbackHandler):
    """A plain (non-tracer) handler: chat model starts and progress events."""

    def __init__(self) -> None:
        self.chat_models: list[tuple[str | None, UUID | None]] = []
        self.progress: list[tuple[str, UUID]] = []

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        name = kwargs.get("name") or (serialized or {}).get("name")
        self.chat_models.append((name, parent_run_id))

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if name == PROGRESS_EVENT:
            self.progress.append((data["kind"], run_id))


def shape(run: Run) -> tuple[Any, ...]:
    """A run tree without ids and times: type, name, tags, caller metadata, children."""
    metadata = (run.extra or {}).get("metadata", {})
    return (
        run.run_type,
        run.name,
        sorted(run.tags or []),
        {k: v for k, v in metadata.items() if k in {"caller", "owner"}},
        sorted((shape(child) for child in run.child_runs), key=repr),
    )


def chat_models(run: Run) -> list[Run]:
    """The inner chat model runs anywhere under ``run``."""
    found = [child for child in run.child_runs if child.run_type == "llm"]
    for child in run.child_runs:
        found.extend(chat_models(child))
    return found


def descendants(run: Run) -> list[Run]:
    """Every run under ``run``: the inner graph's chains and the inner chat models."""
    found = list(run.child_runs)
    for child in run.child_runs:
        found.extend(descendants(child))
    return found


@pytest.mark.parametrize("how", WAYS)
async def test_a_tracer_sees_every_inner_model_under_the_ensembles_run(how: str) -> None:
    tracer = RunCollectorCallbackHandler()
    answer = await call(ensemble(), how, {"callbacks": [tracer]})
    assert answer == "agg: answer 1"
    (root,) = tracer.traced_runs
    assert root.name == "MoAChatModel"
    assert sorted(run.name for run in chat_models(root)) == INNER_CHAT_MODELS


@pytest.mark.parametrize("how", ["ainvoke", "stream", "astream"])
async def test_every_way_of_calling_traces_the_same_tree_as_invoke(how: str) -> None:
    """Including the caller's tags and metadata on every inner run, the graph's too.

    A tag set on both the call and the model is treated as ``invoke`` treats it
    (LangChain counts it as the model's own, which inner runs do not inherit).
    """
    config: RunnableConfig = {"tags": ["caller-tag", "shared"], "metadata": {"caller": "me"}}
    llm = ensemble(tags=["model-tag", "shared"], metadata={"owner": "team"})
    trees = []
    for way in ("invoke", how):
        tracer = RunCollectorCallbackHandler()
        await call(llm, way, {**config, "callbacks": [tracer]})
        (root,) = tracer.traced_runs
        assert len(descendants(root)) > len(INNER_CHAT_MODELS)  # the graph's runs too
        for inner in descendants(root):
            assert "caller-tag" in (inner.tags or []), inner.name
            assert inner.extra["metadata"]["caller"] == "me", inner.name
        trees.append(shape(root))
    assert trees[0] == trees[1]
    assert trees[0][2] == ["caller-tag", "model-tag", "shared"]
    assert trees[0][3] == {"caller": "me", "owner": "team"}


@pytest.mark.parametrize("how", WAYS)
async def test_a_run_id_given_by_the_caller_names_the_ensembles_run(how: str) -> None:
    tracer = RunCollectorCallbackHandler()
    run_id = uuid4()
    await call(ensemble(), how, {"callbacks": [tracer], "run_id": run_id})
    (root,) = tracer.traced_runs
    assert root.id == run_id
    assert len(chat_models(root)) == len(INNER_CHAT_MODELS)


@pytest.mark.parametrize("how", WAYS)
async def test_a_plain_handler_sees_only_the_ensemble_and_its_progress(how: str) -> None:
    handler = Recorder()
    await call(ensemble(), how, {"callbacks": [handler]})
    assert handler.chat_models == [("MoAChatModel", None)]
    assert handler.progress
    assert {kind for kind, _ in handler.progress} >= {"layer_started", "aggregation_started"}


@pytest.mark.parametrize("how", WAYS)
async def test_inner_callbacks_all_shows_a_plain_handler_every_inner_model(how: str) -> None:
    handler = Recorder()
    await call(ensemble(inner_callbacks="all"), how, {"callbacks": [handler]})
    names = [name for name, _ in handler.chat_models]
    assert sorted(names) == sorted(["MoAChatModel", *INNER_CHAT_MODELS])
    assert [parent for name, parent in handler.chat_models if name == "MoAChatModel"] == [None]


@pytest.mark.parametrize("how", WAYS)
async def test_a_handler_set_on_the_model_gets_the_progress_of_every_call(how: str) -> None:
    handler = Recorder()
    await call(ensemble(callbacks=[handler]), how, {})
    assert handler.chat_models == [("MoAChatModel", None)]
    expected = ["layer_started", "proposer_finished", "layer_finished"] * 2
    assert [kind for kind, _ in handler.progress] == [*expected, "aggregation_started"]
    assert len({run_id for _, run_id in handler.progress}) == 1


@pytest.mark.parametrize("policy", ["tracers", "all"])
@pytest.mark.parametrize("how", WAYS)
async def test_handlers_switched_on_by_context_managers_follow_the_policy(
    how: str, policy: str
) -> None:
    """``collect_runs`` (a tracer) always sees the inner models; the usage callback
    counts them only with ``inner_callbacks="all"`` (else the ensemble once)."""
    with get_usage_metadata_callback() as usage, collect_runs() as runs:
        await call(ensemble(inner_callbacks=policy), how, {})
    names = [run.name for root in runs.traced_runs for run in [root, *descendants(root)]]
    assert set(INNER_CHAT_MODELS) <= set(names)
    ensemble_usage = {"input_tokens": 9, "output_tokens": 15, "total_tokens": 24}
    if policy == "tracers":
        assert usage.usage_metadata == {"mixture-of-agents": ensemble_usage}
    else:
        assert sorted(usage.usage_metadata) == ["a", "agg", "mixture-of-agents"]
        assert usage.usage_metadata["mixture-of-agents"] == ensemble_usage
