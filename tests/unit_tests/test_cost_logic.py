"""Pure logic of the cost controls: prices, estimates, selection, notes (issue 15)."""

from __future__ import annotations

import uuid

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from langchain_moa.budget import (
    DEFAULT_COMPLETION_TOKENS,
    Budget,
    Estimate,
    completion_cap,
    heuristic_tokens,
    prompt_tokens,
)
from langchain_moa.cost import Rates, check_prices
from langchain_moa.layer_controls import permanent_failure
from langchain_moa.notes import merge_notes, reference_proposals
from langchain_moa.selection import (
    mean_pairwise_similarity,
    parse_judgement,
    select_diverse,
    select_first,
)
from langchain_moa.state import Proposal
from langchain_moa.testing.answers import SimulatedTurn, pad_answer


def proposal(layer: int, index: int, error: str | None = None) -> Proposal:
    text = None if error else f"p{index}"
    return Proposal(layer, index, f"m{index}", text, None, 0.1, error=error)


def test_rates_price_tokens_per_million() -> None:
    rates = Rates(input=2.0, output=8.0, cache_read=0.5)
    assert rates.cost(1_000_000, 0) == pytest.approx(2.0)
    assert rates.cost(1000, 500, cache_read_tokens=400) == pytest.approx(
        (600 * 2 + 400 * 0.5 + 500 * 8) / 1e6
    )
    assert Rates(1.0, 1.0).cost(10, 10, cache_read_tokens=10) == pytest.approx(20 / 1e6)


def test_price_tables_are_checked() -> None:
    check_prices(None)
    check_prices({"m": {"input": 0, "output": 1.5, "cache_read": 0.1}})
    for bad in ([1], {"m": {"input": 1}}, {"m": {"input": 1, "output": "x"}}, {1: {}}):
        with pytest.raises(ValueError, match="prices"):
            check_prices(bad)


def test_estimates_add_up_and_lose_dollars_when_a_price_is_missing() -> None:
    total = Estimate(10, 0.5) + Estimate(5, 0.25)
    assert (total.tokens, total.usd) == (15, 0.75)
    unknown = total + Estimate(1, None, ("m",))
    assert unknown.usd is None
    assert unknown.unpriced == ("m",)
    budget = Budget(max_cost_usd=1.0, max_total_tokens=20)
    assert budget.fits(0.75, 15)
    assert not budget.fits(None, 15)
    assert not budget.fits(0.5, 21)
    assert Budget(max_total_tokens=20).fits(None, 20)
    assert not Budget().active


def test_token_counts_fall_back_to_the_heuristic() -> None:
    messages = [SystemMessage("a" * 40), HumanMessage("b" * 9)]
    assert heuristic_tokens(messages) == 10 + 4 + 3 + 4
    # Offline, ChatOpenAI cannot load its tokenizer data: the heuristic answers.
    # A fresh name: the process remembers broken counters across tests.
    model = NoCounter(model=f"not-a-real-model-{uuid.uuid4()}", api_key="k")
    assert prompt_tokens(model, messages) == heuristic_tokens(messages)
    assert prompt_tokens(model, messages) == heuristic_tokens(messages)
    assert model.tried == 1  # a counter that failed is not tried again


class NoCounter(ChatOpenAI):
    tried: int = 0

    def get_num_tokens_from_messages(self, messages: object, tools: object = None) -> int:
        self.tried += 1
        msg = "no tokenizer data"
        raise OSError(msg)


def test_completion_caps() -> None:
    model = ChatOpenAI(model="m", api_key="k")
    assert completion_cap(model, {}) == DEFAULT_COMPLETION_TOKENS
    assert completion_cap(model, {"max_tokens": 7}) == 7
    assert completion_cap(ChatOpenAI(model="m", api_key="k", max_tokens=9), {}) == 9
    assert completion_cap(model.bind(max_completion_tokens=11), {}) == 11


def test_diverse_selection_is_greedy_max_min() -> None:
    vectors = [[1, 0, 0], [1, 0, 0], [0, 0, 1], [0.7, 0.7, 0]]
    kept, reasons = select_diverse(vectors, 2)
    assert kept == [0, 2]
    assert set(reasons) == {0, 2}
    assert select_diverse(vectors, 9)[0] == [0, 1, 2, 3]
    assert mean_pairwise_similarity([[1, 0], [1, 0]]) == pytest.approx(1.0)
    assert mean_pairwise_similarity([[1, 0], [0, 1]]) == pytest.approx(0.0)


def test_first_and_judge_selection() -> None:
    kept, reasons = select_first([0.5, 0.1, 0.3, 0.1], 2)
    assert kept == [1, 3]
    assert reasons[1].startswith("finished 1.")
    assert parse_judgement("Best: 3, then 1 (and 3 again, 9)", 3, 2) == [2, 0]
    assert parse_judgement("none of them", 3, 2) is None


def test_notes_merge_idempotently_and_steer_references() -> None:
    left = {"kept": {1: {"indices": [0]}}, "tripped": {"a": {"layer": 1}}}
    right = {"kept": {2: {"indices": [1]}}, "stopped_after": 2}
    merged = merge_notes(left, right)
    assert merge_notes(merged, merged) == merged
    assert merged["kept"] == {1: {"indices": [0]}, 2: {"indices": [1]}}
    state = {
        "proposals": [proposal(1, 0), proposal(1, 1), proposal(1, 2, error="X: y")],
        "controls": {"kept": {1: {"indices": [1, 2]}}},
    }
    assert [p.index for p in reference_proposals(state, 1)] == [1]
    # A later layer that did not run: the references come from the last that did.
    stopped = {**state, "controls": {"stopped_after": 1}}
    assert [p.index for p in reference_proposals(stopped, 3)] == [0, 1]


def test_which_failures_open_the_circuit() -> None:
    assert permanent_failure(proposal(1, 0, "AuthenticationError: Error code: 401"))
    assert permanent_failure(proposal(1, 0, "InternalServerError: Error code: 500"))
    for own in (
        "ProposerTimeoutError: no answer",
        "LayerDeadlineError: cut",
        "EmptyAnswerError: x",
    ):
        assert not permanent_failure(proposal(1, 0, own))
    assert not permanent_failure(proposal(1, 0))


def test_the_simulator_pads_answers_and_still_honours_max_tokens() -> None:
    turn = SimulatedTurn("m", "m answers: q", None, "stop", 1, 3)
    padded = pad_answer(turn, 10, {})
    assert padded.content.startswith("m answers: q and more detail")
    assert (padded.completion_tokens, len(padded.content.split())) == (10, 10)
    cut = pad_answer(turn, 10, {"max_tokens": 5})
    assert (cut.completion_tokens, cut.finish_reason) == (5, "length")
    assert pad_answer(turn, 2, {}) == turn
    assert pad_answer(turn, None, {}) == turn
