"""Failure handling over real HTTP, driven by the simulator's fault knobs."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from langchain_core.load import dumps
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.tracers.context import collect_runs
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from langchain_moa import AggregatorFailedError, MoAChatModel, ProposersFailedError
from langchain_moa.testing import ModelBehavior, OpenAISimulator
from langchain_moa.testing.answers import parse_references
from tests.simulated_usage import aggregator_usage, proposer_usage

FAST_RETRY = {"retry_base_delay": 0.05, "retry_max_delay": 2.0}


def team(sim: OpenAISimulator, tag: str, n: int = 3, **kwargs: Any) -> MoAChatModel:
    return MoAChatModel(
        proposers=[sim.chat_model(f"{tag}-p{i}") for i in range(n)],
        aggregator=sim.chat_model(f"{tag}-agg"),
        layers=kwargs.pop("layers", 2),
        **{**FAST_RETRY, **kwargs},
    )


def proposals(result: AIMessage, layer: int = 0) -> list[dict[str, Any]]:
    return result.response_metadata["proposals"][layer]


def references_sent_to(sim: OpenAISimulator, model: str) -> list[str]:
    body = sim.requests_for(model)[-1].body
    return parse_references(body["messages"][0]["content"])


# -- 1. per-proposer timeout --------------------------------------------------------


def test_a_hung_proposer_times_out_on_the_sync_path(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("hang-s-p1", ModelBehavior(hang=True))
    llm = team(openai_simulator, "hang-s", proposer_timeout=0.5)
    threads_before = threading.active_count()
    started = time.perf_counter()
    for _ in range(3):
        result = llm.invoke("q")
    elapsed = time.perf_counter() - started
    assert elapsed < 3 * 0.5 + 1.5  # three calls, each cut at the timeout
    failed = proposals(result)[1]
    assert failed["error"] == "ProposerTimeoutError: no answer within 0.5s"
    assert result.content == "hang-s-agg read 2 references [hang-s-p0, hang-s-p2] and answers: q"
    # Cancelled for real: no thread is left blocked on a hung call. (The shared
    # background loop and LangGraph's pool account for a few threads at most.)
    assert threading.active_count() <= threads_before + 4


async def test_a_hung_proposer_times_out_on_the_async_path(
    openai_simulator: OpenAISimulator,
) -> None:
    openai_simulator.set_behavior("hang-a-p0", ModelBehavior(hang=True))
    llm = team(openai_simulator, "hang-a", proposer_timeout=0.4)
    started = time.perf_counter()
    result = await llm.ainvoke("q")
    assert time.perf_counter() - started < 1.5
    assert proposals(result)[0]["error"] == "ProposerTimeoutError: no answer within 0.4s"
    assert result.response_metadata["degraded"] is True


# -- 2. quorum and layer deadline -----------------------------------------------------


@pytest.mark.parametrize("path", ["sync", "async"])
async def test_the_deadline_cuts_stragglers_once_the_quorum_is_met(
    openai_simulator: OpenAISimulator, path: str
) -> None:
    tag = f"dl-{path}"
    openai_simulator.set_behavior(f"{tag}-p2", ModelBehavior(first_token_latency=3.0))
    llm = team(openai_simulator, tag, layers=3, layer_deadline=0.4, min_proposers=2)
    started = time.perf_counter()
    result = llm.invoke("q") if path == "sync" else await llm.ainvoke("q")
    # Two layers, each cut at ~0.4 s instead of waiting 3 s for the straggler.
    assert time.perf_counter() - started < 2.0
    for layer in (0, 1):
        cut = proposals(result, layer)[2]
        assert cut["error"].startswith("LayerDeadlineError: cut at the layer deadline (0.4s)")
        assert [p["error"] is None for p in proposals(result, layer)[:2]] == [True, True]
    assert result.content == f"{tag}-agg read 2 references [{tag}-p0, {tag}-p1] and answers: q"


async def test_the_deadline_waits_for_the_quorum(openai_simulator: OpenAISimulator) -> None:
    for i, latency in enumerate((0.1, 0.9, 0.1)):
        openai_simulator.set_behavior(f"dq-p{i}", ModelBehavior(first_token_latency=latency))
    llm = team(openai_simulator, "dq", layer_deadline=0.2, min_proposers=3)
    started = time.perf_counter()
    result = await llm.ainvoke("q")
    assert time.perf_counter() - started >= 0.9
    assert all(p["error"] is None for p in proposals(result))


def test_the_default_waits_for_every_proposer(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("dflt-p0", ModelBehavior(first_token_latency=0.8))
    result = team(openai_simulator, "dflt").invoke("q")
    assert all(p["error"] is None for p in proposals(result))


# -- 3. retries -------------------------------------------------------------------------


def test_transient_failures_are_retried(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("rt-p0", ModelBehavior(fail_first=2, failure_status=503))
    result = team(openai_simulator, "rt", max_retries=2).invoke("q")
    first = proposals(result)[0]
    assert first["error"] is None
    assert first["attempts"] == 3
    assert len(openai_simulator.requests_for("rt-p0")) == 3


async def test_429_honours_retry_after(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior(
        "ra-p0", ModelBehavior(fail_first=1, failure_status=429, retry_after=0.6)
    )
    llm = team(openai_simulator, "ra", max_retries=1, retry_base_delay=0.0)
    started = time.perf_counter()
    result = await llm.ainvoke("q")
    assert time.perf_counter() - started >= 0.6
    assert proposals(result)[0]["attempts"] == 2
    times = [r.time for r in openai_simulator.requests_for("ra-p0")]
    assert times[1] - times[0] >= 0.6


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_permanent_failures_are_not_retried(openai_simulator: OpenAISimulator, status: int) -> None:
    tag = f"perm{status}"
    openai_simulator.set_behavior(f"{tag}-p0", ModelBehavior(error_status=status))
    result = team(openai_simulator, tag, max_retries=3).invoke("q")
    failed = proposals(result)[0]
    assert failed["attempts"] == 1
    assert f"Error code: {status}" in failed["error"]
    assert len(openai_simulator.requests_for(f"{tag}-p0")) == 1


def test_retries_give_up_and_report(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("gu-p1", ModelBehavior(error_status=500))
    result = team(openai_simulator, "gu", max_retries=2).invoke("q")
    failed = proposals(result)[1]
    assert failed["attempts"] == 3
    assert "Error code: 500" in failed["error"]


# -- 4. reporting, quorum errors, aggregator failure and fallback --------------------


def test_malformed_and_flaky_providers_are_reported(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("mf-p0", ModelBehavior(malformed=True))
    result = team(openai_simulator, "mf", max_retries=0).invoke("q")
    meta = result.response_metadata
    assert meta["degraded"] is True
    assert meta["failed_proposers"] == 1
    assert proposals(result)[0]["error"]
    assert references_sent_to(openai_simulator, "mf-agg")[0].startswith("mf-p1 ")


def test_below_quorum_raises_with_every_cause(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("bq-p0", ModelBehavior(error_status=500))
    openai_simulator.set_behavior("bq-p1", ModelBehavior(hang=True))
    llm = team(openai_simulator, "bq", min_proposers=2, max_retries=0, proposer_timeout=0.3)
    with pytest.raises(ProposersFailedError) as caught:
        llm.invoke("q")
    error = caught.value
    assert error.layer == 1
    assert {p.model for p in error.failures} == {"bq-p0", "bq-p1"}
    assert "Error code: 500" in str(error)
    assert "no answer within 0.3s" in str(error)
    assert [p.text for p in error.proposals if p.ok] == ["bq-p2 answers: q"]
    assert not openai_simulator.requests_for("bq-agg")


def test_aggregator_failure_raises_with_the_proposals(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("af-agg", ModelBehavior(error_status=503))
    with pytest.raises(AggregatorFailedError) as caught:
        team(openai_simulator, "af", max_retries=1).invoke("q")
    assert len(caught.value.proposals) == 3
    assert "Error code: 503" in str(caught.value)
    assert len(openai_simulator.requests_for("af-agg")) == 2


async def test_fallback_aggregator_answers_when_the_aggregator_fails(
    openai_simulator: OpenAISimulator,
) -> None:
    openai_simulator.set_behavior("fb-agg", ModelBehavior(error_status=401))
    llm = team(openai_simulator, "fb", fallback_aggregator=openai_simulator.chat_model("fb-backup"))
    result = await llm.ainvoke("q")
    assert result.content == "fb-backup read 3 references [fb-p0, fb-p1, fb-p2] and answers: q"
    aggregator = result.response_metadata["aggregator"]
    assert aggregator["model"] == "fb-backup"
    assert aggregator["fallback_from"].startswith("fb-agg: ")
    assert "Error code: 401" in aggregator["fallback_from"]


# -- 5. context budget --------------------------------------------------------------------


def test_references_are_cut_fairly_to_the_budget(openai_simulator: OpenAISimulator) -> None:
    long_question = "Explain " + "very " * 200 + "carefully."
    llm = team(openai_simulator, "cb", max_reference_chars=300)
    llm.invoke(long_question)
    references = references_sent_to(openai_simulator, "cb-agg")
    assert len(references) == 3
    for reference in references:
        assert "[... truncated " in reference
        assert reference.startswith("cb-p")
    kept = [r.split("[... truncated ")[0] for r in references]
    assert sum(len(k) for k in kept) <= 300
    assert len({len(k) for k in kept}) == 1  # an equal share each


# -- 6. isolation under load ----------------------------------------------------------------


async def test_200_concurrent_calls_stay_isolated_and_bounded(
    openai_simulator: OpenAISimulator,
) -> None:
    for i in range(3):
        openai_simulator.set_behavior(f"load-p{i}", ModelBehavior(first_token_latency=0.05))
    llm = team(openai_simulator, "load", max_concurrency=12)
    openai_simulator.reset_peak_in_flight()
    questions = [f"question number {i}" for i in range(200)]
    results = await asyncio.gather(*(llm.ainvoke(q) for q in questions))
    assert openai_simulator.peak_in_flight <= 12
    for question, result in zip(questions, results, strict=True):
        assert result.content == (
            f"load-agg read 3 references [load-p0, load-p1, load-p2] and answers: {question}"
        )
        for proposal in proposals(result):
            assert proposal["text"].endswith(f"answers: {question}")
    # Every aggregator request carried only its own question's proposals.
    for request in openai_simulator.requests_for("load-agg"):
        question = request.body["messages"][-1]["content"]
        refs = parse_references(request.body["messages"][0]["content"])
        assert all(ref.endswith(f"answers: {question}") for ref in refs)


# -- 7. bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda llm: llm.invoke([]), ValueError, "empty message list"),
        (
            lambda llm: llm.invoke([SystemMessage("only a system prompt")]),
            ValueError,
            "no user message",
        ),
        (
            lambda llm: llm.invoke([HumanMessage(content=[{"type": "hologram", "data": "x"}])]),
            ValueError,
            "unsupported content block of type 'hologram'",
        ),
        (lambda llm: llm.invoke("q", temprature=0.2), TypeError, "unsupported call arguments"),
        (lambda llm: llm.invoke("q", stop="END"), TypeError, "stop must be a list of strings"),
        (lambda llm: llm.invoke("q", model="gpt-4o"), TypeError, "no single model to override"),
    ],
)
def test_bad_input_fails_before_any_provider_call(
    openai_simulator: OpenAISimulator, call: Any, error: type[Exception], message: str
) -> None:
    llm = team(openai_simulator, "badin")
    before = len(openai_simulator.requests)
    with pytest.raises(error, match=message):
        call(llm)
    assert len(openai_simulator.requests) == before


# -- 8. secrets ------------------------------------------------------------------------------


SECRET = "sk-proj-SuperSecretValue1234567890"


def test_api_keys_never_leak(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("sec-p1", ModelBehavior(error_status=401))

    def chat(model: str) -> ChatOpenAI:
        return ChatOpenAI(
            base_url=openai_simulator.base_url,
            api_key=SecretStr(SECRET),
            model=model,
            max_retries=0,
        )

    llm = MoAChatModel(
        proposers=[chat("sec-p0"), chat("sec-p1")], aggregator=chat("sec-agg"), layers=2
    )
    with collect_runs() as runs:
        result = llm.invoke("q")
    assert result.response_metadata["degraded"] is True
    seen = [
        repr(llm),
        str(llm),
        str(result),
        repr(result.response_metadata),
        dumps(llm.proposers[0]),
        str(llm._identifying_params),
        llm._get_llm_string(),
        repr([run.model_dump() for run in runs.traced_runs]),
    ]
    for text in seen:
        assert SECRET not in text
    openai_simulator.set_behavior("sec-agg", ModelBehavior(error_status=401))
    with pytest.raises(AggregatorFailedError) as caught:
        llm.invoke("q")
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value.proposals)


async def test_a_streamed_fallback_answer_counts_the_fallbacks_tokens(
    openai_simulator: OpenAISimulator,
) -> None:
    # The backup is a ChatOpenAI on a custom base URL, which does not ask for stream
    # usage by itself: the ensemble must ask, or the streamed usage loses its tokens.
    openai_simulator.set_behavior("sfb-agg", ModelBehavior(error_status=401))
    backup = openai_simulator.chat_model("sfb-backup", stream_usage=False)
    llm = team(openai_simulator, "sfb", fallback_aggregator=backup)
    chunks = [chunk async for chunk in llm.astream("q")]
    text = "".join(str(c.content) for c in chunks)
    assert text == "sfb-backup read 3 references [sfb-p0, sfb-p1, sfb-p2] and answers: q"
    total = sum(c.usage_metadata["total_tokens"] for c in chunks if c.usage_metadata)
    expected = 3 * proposer_usage("q")["total_tokens"] + aggregator_usage("q", 3)["total_tokens"]
    assert total == expected
