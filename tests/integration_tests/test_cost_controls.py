"""Cost controls over HTTP: circuit breaker, budgets, reference selection, early stop (issue 15)."""

from __future__ import annotations

import time

import pytest
from langchain_core.embeddings import Embeddings
from langchain_openai import ChatOpenAI

from langchain_moa import MoAChatModel
from langchain_moa.agreement import Agreement
from langchain_moa.budget import BudgetExceededError
from langchain_moa.testing import ModelBehavior, OpenAISimulator
from tests.simulated_usage import simulator_usage

ONE_DOLLAR = {"input": 1.0, "output": 1.0}


class FirstWordEmbeddings(Embeddings):
    """Embeds a text by its first word (the simulator starts every answer with the model)."""

    def __init__(self, vectors: dict[str, list[float]], default: list[float] | None = None) -> None:
        self.vectors = vectors
        self.default = default or [1.0, 0.0, 0.0]
        self.calls = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        return [self.vectors.get(text.split()[0], self.default) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def chat(sim: OpenAISimulator, model: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=sim.base_url, api_key="sim-key", model=model, max_retries=0)


def team(
    sim: OpenAISimulator, tag: str, *, proposers: int = 3, layers: int = 3, **fields: object
) -> MoAChatModel:
    return MoAChatModel(
        proposers=[chat(sim, f"{tag}-p{i}") for i in range(proposers)],
        aggregator=chat(sim, f"{tag}-agg"),
        layers=layers,
        **fields,
    )


def priced(tag: str, proposers: int = 3, extra: tuple[str, ...] = ()) -> dict:
    names = [f"{tag}-p{i}" for i in range(proposers)] + [f"{tag}-agg", *extra]
    return {name: ONE_DOLLAR for name in names}


def calls(sim: OpenAISimulator, model: str) -> int:
    return len(sim.requests_for(model))


# -- 5. circuit breaker ------------------------------------------------------------


def test_a_permanent_failure_is_not_called_again(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("cccb-p1", ModelBehavior(error_status=401))
    result = team(openai_simulator, "cccb").invoke("q")
    first, second = result.response_metadata["proposals"]
    assert "Error code: 401" in first[1]["error"]
    assert second[1]["error"].startswith("CircuitOpenError: not called")
    assert "layer 1" in second[1]["error"]
    assert "Error code: 401" in second[1]["error"]
    assert second[1]["attempts"] == 0
    assert calls(openai_simulator, "cccb-p1") == 1
    assert calls(openai_simulator, "cccb-p0") == 2
    (tripped,) = result.response_metadata["circuit_breaker"]
    assert (tripped["model"], tripped["layer"]) == ("cccb-p1", 1)
    assert result.content == "cccb-agg read 2 references [cccb-p0, cccb-p2] and answers: q"


async def test_exhausted_retries_trip_the_breaker_but_timeouts_do_not(
    openai_simulator: OpenAISimulator,
) -> None:
    openai_simulator.set_behavior("cccbt-p0", ModelBehavior(error_status=503))
    openai_simulator.set_behavior("cccbt-p1", ModelBehavior(first_token_latency=2.0))
    llm = team(
        openai_simulator, "cccbt", max_retries=1, retry_base_delay=0.01, proposer_timeout=0.5
    )
    result = await llm.ainvoke("q")
    second = result.response_metadata["proposals"][1]
    assert calls(openai_simulator, "cccbt-p0") == 2  # two attempts in layer 1, none in layer 2
    assert second[0]["error"].startswith("CircuitOpenError")
    assert "ProposerTimeoutError" in second[1]["error"]  # timed out again: it was called
    assert calls(openai_simulator, "cccbt-p1") == 2


def test_the_breaker_can_be_switched_off(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("cccbo-p1", ModelBehavior(error_status=404))
    result = team(openai_simulator, "cccbo", circuit_breaker=False).invoke("q")
    assert "Error code: 404" in result.response_metadata["proposals"][1][1]["error"]
    assert calls(openai_simulator, "cccbo-p1") == 2
    assert "circuit_breaker" not in result.response_metadata


# -- 2. budgets ------------------------------------------------------------------------


def test_a_roomy_budget_runs_every_layer_and_reports_estimate_and_actual(
    openai_simulator: OpenAISimulator,
) -> None:
    llm = team(openai_simulator, "ccbgr", max_tokens=50, prices=priced("ccbgr"), max_cost_usd=1.0)
    meta = llm.invoke("Why is the sky blue?").response_metadata
    assert meta["budget_stopped_after_layer"] is None
    budget = meta["budget"]
    assert [c["ran"] for c in budget["checks"]] == [True, True]
    assert budget["max_cost_usd"] == 1.0
    # Completion caps and a generous token heuristic make the estimate an upper bound here.
    assert budget["estimated"]["usd"] >= budget["actual"]["usd"]
    assert budget["actual"]["usd"] == pytest.approx(meta["cost"]["total_usd"])
    # $1 per million tokens either way: every token the simulator counted, in dollars.
    sent = [r for r in openai_simulator.requests if r.model.startswith("ccbgr-")]
    assert len(sent) == 3 + 3 + 1
    assert budget["actual"]["usd"] == pytest.approx(simulator_usage(sent)["total_tokens"] / 1e6)


def probe(sim: OpenAISimulator, tag: str) -> dict:
    """The first layer's budget check (layer and aggregation estimates)."""
    llm = team(sim, tag, max_tokens=50, prices=priced(tag), max_total_tokens=10**9)
    return llm.invoke("Why is the sky blue?").response_metadata["budget"]["checks"][0]


@pytest.mark.parametrize("path", ["invoke", "ainvoke"])
async def test_a_tight_budget_stops_adding_layers_and_aggregates(
    openai_simulator: OpenAISimulator, path: str
) -> None:
    tag = f"ccbgs{path[0]}"
    first = probe(openai_simulator, f"{tag}x")
    enough_for_one = first["layer_estimate"]["usd"] + first["aggregation_estimate"]["usd"]
    llm = team(
        openai_simulator, tag, max_tokens=50, prices=priced(tag), max_cost_usd=enough_for_one * 1.05
    )
    if path == "invoke":
        result = llm.invoke("Why is the sky blue?")
    else:
        result = await llm.ainvoke("Why is the sky blue?")
    meta = result.response_metadata
    assert meta["budget_stopped_after_layer"] == 1
    assert [c["ran"] for c in meta["budget"]["checks"]] == [True, False]
    assert meta["proposals"][1] == []
    references = f"[{tag}-p0, {tag}-p1, {tag}-p2]"
    assert (
        result.content
        == f"{tag}-agg read 3 references {references} and answers: Why is the sky blue?"
    )
    assert all(calls(openai_simulator, f"{tag}-p{i}") == 1 for i in range(3))
    assert meta["cost"]["total_usd"] <= enough_for_one * 1.05


def test_a_budget_that_cannot_pay_for_one_layer_raises_before_spending(
    openai_simulator: OpenAISimulator,
) -> None:
    llm = team(openai_simulator, "ccbgx", max_tokens=50, prices=priced("ccbgx"), max_cost_usd=1e-6)
    with pytest.raises(BudgetExceededError, match="no provider was called") as caught:
        llm.invoke("q")
    assert caught.value.estimate["usd"] > 1e-6
    assert not openai_simulator.requests_for("ccbgx-p0")
    assert not openai_simulator.requests_for("ccbgx-agg")


def test_a_per_call_budget_overrides_the_ensembles(openai_simulator: OpenAISimulator) -> None:
    llm = team(openai_simulator, "ccbgc", max_tokens=50, prices=priced("ccbgc"))
    with pytest.raises(BudgetExceededError):
        llm.invoke("q", max_cost_usd=1e-6)
    with pytest.raises(BudgetExceededError, match="max_total_tokens=10"):
        llm.invoke("q", max_total_tokens=10)
    with pytest.raises(BudgetExceededError):
        llm.bind(max_total_tokens=10).invoke("q")
    assert not openai_simulator.requests_for("ccbgc-p0")
    meta = llm.invoke("q", max_total_tokens=10**6).response_metadata
    assert meta["budget"]["max_total_tokens"] == 10**6
    assert "budget" not in llm.invoke("q").response_metadata
    with pytest.raises(ValueError, match="max_cost_usd"):
        llm.invoke("q", max_cost_usd=-1)
    with pytest.raises(TypeError, match="max_total_tokens"):
        llm.invoke("q", max_total_tokens="many")


def test_a_dollar_budget_needs_every_price(openai_simulator: OpenAISimulator) -> None:
    llm = team(openai_simulator, "ccbgu", max_tokens=50, max_cost_usd=10.0)
    with pytest.raises(BudgetExceededError) as caught:
        llm.invoke("q")
    assert "ccbgu-p0" in caught.value.estimate["unpriced"]
    assert "no price for" in str(caught.value)
    assert not openai_simulator.requests_for("ccbgu-p0")


# -- 3. reference selection ----------------------------------------------------------


@pytest.mark.parametrize("path", ["invoke", "ainvoke"])
async def test_diverse_selection_keeps_the_most_different(
    openai_simulator: OpenAISimulator, path: str
) -> None:
    tag = f"ccsd{path[0]}"
    embeddings = FirstWordEmbeddings(
        {
            f"{tag}-p0": [1.0, 0.0, 0.0],
            f"{tag}-p1": [1.0, 0.0, 0.0],  # says what p0 says
            f"{tag}-p2": [0.0, 0.0, 1.0],
            f"{tag}-p3": [0.7, 0.7, 0.0],
        }
    )
    llm = team(
        openai_simulator,
        tag,
        proposers=4,
        select_references=2,
        selection_embeddings=embeddings,
    )
    result = llm.invoke("q") if path == "invoke" else await llm.ainvoke("q")
    assert result.content == f"{tag}-agg read 2 references [{tag}-p0, {tag}-p2] and answers: q"
    layer_two = openai_simulator.requests_for(f"{tag}-p1")[1].body["messages"][0]["content"]
    assert f"\n1. {tag}-p0 answers: q\n2. {tag}-p2 answers: q" in layer_two
    selection = result.response_metadata["selection"]
    assert [s["indices"] for s in selection] == [[0, 2], [0, 2]]
    assert selection[0]["strategy"] == "diverse"
    assert selection[0]["dropped"] == [1, 3]
    assert "most central" in selection[0]["reasons"][0]
    assert "farthest" in selection[0]["reasons"][2]


@pytest.mark.parametrize("path", ["invoke", "ainvoke"])
async def test_a_judge_picks_the_references_and_is_paid_for(
    openai_simulator: OpenAISimulator, path: str
) -> None:
    # The simulator's judge repeats the request: its first numbers are the question's "3 or 1".
    tag = f"ccsj{path[0]}"
    llm = team(
        openai_simulator,
        tag,
        layers=2,
        select_references=2,
        selection_strategy="judge",
        selection_judge=chat(openai_simulator, f"{tag}-judge"),
        prices=priced(tag, extra=(f"{tag}-judge",)),
    )
    question = "Answer 3 or 1?"
    result = llm.invoke(question) if path == "invoke" else await llm.ainvoke(question)
    assert (
        result.content
        == f"{tag}-agg read 2 references [{tag}-p0, {tag}-p2] and answers: {question}"
    )
    meta = result.response_metadata
    (judged,) = meta["selection_judge"]
    # The judge's usage as the simulator counted it, at $1 per million tokens.
    judge_tokens = simulator_usage(openai_simulator.requests_for(f"{tag}-judge"))["total_tokens"]
    assert judged["usage"]["total_tokens"] == judge_tokens
    assert judged["cost_usd"] == pytest.approx(judge_tokens / 1e6)
    records = [*meta["proposals"][0], meta["aggregator"]]
    inner = sum(r["usage"]["total_tokens"] for r in records)
    assert result.usage_metadata["total_tokens"] == inner + judged["usage"]["total_tokens"]
    assert meta["cost"]["total_usd"] == pytest.approx(
        sum(r["cost_usd"] for r in records) + judged["cost_usd"]
    )
    assert meta["selection"][0]["reasons"] == {2: "judge ranked it 1.", 0: "judge ranked it 2."}


async def test_first_keeps_the_fastest_and_cancels_the_rest(
    openai_simulator: OpenAISimulator,
) -> None:
    for i, latency in enumerate([0.05, 10.0, 0.1, 10.0]):
        openai_simulator.set_behavior(f"ccsf-p{i}", ModelBehavior(first_token_latency=latency))
    llm = team(
        openai_simulator,
        "ccsf",
        proposers=4,
        layers=2,
        select_references=2,
        selection_strategy="first",
    )
    started = time.perf_counter()
    result = await llm.ainvoke("q")
    assert time.perf_counter() - started < 5.0  # the two stragglers would take 10 s
    assert result.content == "ccsf-agg read 2 references [ccsf-p0, ccsf-p2] and answers: q"
    meta = result.response_metadata
    assert [p["error"] is None for p in meta["proposals"][0]] == [True, False, True, False]
    assert meta["proposals"][0][1]["error"].startswith("NotSelectedError")
    assert meta["failed_proposers"] == 0
    assert meta["degraded"] is False
    assert meta["selection"][0]["indices"] == [0, 2]


def test_selection_settings_are_checked() -> None:
    model = ChatOpenAI(model="m", api_key="k")
    with pytest.raises(ValueError, match="selection_embeddings"):
        MoAChatModel(proposers=[model], aggregator=model, select_references=1)
    with pytest.raises(ValueError, match="selection_judge"):
        MoAChatModel(
            proposers=[model], aggregator=model, select_references=1, selection_strategy="judge"
        )


# -- 4. early stop ------------------------------------------------------------------------


def test_agreeing_answers_skip_the_remaining_layers(openai_simulator: OpenAISimulator) -> None:
    same = FirstWordEmbeddings({}, default=[0.6, 0.8, 0.0])
    llm = team(openai_simulator, "ccea", layers=4, early_stop=Agreement(0.95, same))
    result = llm.invoke("q")
    meta = result.response_metadata
    assert result.content == "ccea-agg read 3 references [ccea-p0, ccea-p1, ccea-p2] and answers: q"
    assert meta["proposals"][1:] == [[], []]
    assert meta["early_stop"]["stopped_after_layer"] == 1
    assert meta["early_stop"]["layers"][0]["similarity"] == pytest.approx(1.0)
    assert all(calls(openai_simulator, f"ccea-p{i}") == 1 for i in range(3))


async def test_disagreeing_answers_go_on(openai_simulator: OpenAISimulator) -> None:
    apart = FirstWordEmbeddings(
        {"cced-p0": [1.0, 0.0, 0.0], "cced-p1": [0.0, 1.0, 0.0], "cced-p2": [0.0, 0.0, 1.0]}
    )
    llm = team(openai_simulator, "cced", early_stop=Agreement(0.9, apart))
    meta = (await llm.ainvoke("q")).response_metadata
    assert meta["early_stop"]["stopped_after_layer"] is None
    assert meta["early_stop"]["layers"][0]["similarity"] == pytest.approx(0.0)
    assert len(meta["proposals"][1]) == 3


def test_agreement_is_checked_on_the_kept_references(openai_simulator: OpenAISimulator) -> None:
    vectors = FirstWordEmbeddings(
        {"ccek-p0": [1.0, 0.0], "ccek-p1": [1.0, 0.0], "ccek-p2": [0.0, 1.0], "ccek-p3": [0.0, 1.0]}
    )
    llm = team(
        openai_simulator,
        "ccek",
        proposers=4,
        select_references=2,
        selection_embeddings=vectors,
        early_stop=Agreement(0.5, vectors),
    )
    meta = llm.invoke("q").response_metadata
    # Diverse selection keeps two that disagree, so the run goes on.
    assert meta["selection"][0]["indices"] == [0, 2]
    assert meta["early_stop"]["layers"][0]["similarity"] == pytest.approx(0.0)
    assert vectors.calls == 2  # one call per layer: the kept vectors are reused
    with pytest.raises(ValueError, match="threshold"):
        Agreement(2, vectors)


def test_a_failed_judge_keeps_the_first_k_and_says_why(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("ccsjf-judge", ModelBehavior(error_status=400))
    llm = team(
        openai_simulator,
        "ccsjf",
        layers=2,
        select_references=2,
        selection_strategy="judge",
        selection_judge=chat(openai_simulator, "ccsjf-judge"),
    )
    chunks = list(llm.stream("q"))
    assert "".join(c.content for c in chunks) == (
        "ccsjf-agg read 2 references [ccsjf-p0, ccsjf-p1] and answers: q"
    )
    meta = chunks[-1].response_metadata
    assert meta["selection"][0]["indices"] == [0, 1]
    assert "the judge failed" in meta["selection"][0]["note"]
    assert "Error code: 400" in meta["selection_judge"][0]["error"]
