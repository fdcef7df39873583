"""Deep copies of an ensemble, and counting tokens with the aggregator's counter."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from langchain.chat_models import init_chat_model
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from langchain_moa import MoAChatModel

WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather", "parameters": {}},
}


def ensemble() -> MoAChatModel:
    """An ensemble of deep-copyable fakes that has run once (its graph is built)."""
    llm = MoAChatModel(
        proposers=[FakeListChatModel(responses=["p"])],
        aggregator=FakeListChatModel(responses=["answer"]),
        layers=2,
    )
    assert llm.invoke("q").content == "answer"
    return llm


# -- deep copies ------------------------------------------------------------------------


def test_model_copy_deep_copies_the_inner_models() -> None:
    llm = ensemble()
    copied = llm.model_copy(deep=True)
    original_proposer = llm.proposers[0]
    copied_proposer = copied.proposers[0]
    assert copied_proposer is not original_proposer
    assert copied.aggregator is not llm.aggregator
    copied_proposer.responses.append("only in the copy")  # type: ignore[union-attr]
    assert original_proposer.responses == ["p"]  # type: ignore[union-attr]
    assert copied.invoke("q").content == "answer"


def test_a_shallow_model_copy_shares_the_inner_models() -> None:
    llm = ensemble()
    copied = llm.model_copy()
    assert copied.proposers[0] is llm.proposers[0]
    assert copied.invoke("q").content == "answer"


def test_deepcopy_keeps_models_shared_with_the_rest_of_the_copied_structure() -> None:
    llm = ensemble()
    proposer = llm.proposers[0]
    # One copy per original: the copied ensemble uses the copied proposer.
    copied_llm, copied_proposer = copy.deepcopy([llm, proposer])
    assert copied_proposer is not proposer
    assert copied_llm.proposers[0] is copied_proposer
    assert copied_llm.invoke("q").content == "answer"


def test_deepcopy_leaves_only_live_objects_in_a_shared_memo() -> None:
    # copy.deepcopy keeps every object whose id it records alive (in the memo), so
    # an id cannot be reused while the memo lives; the ensemble's temporary copy is
    # freed, so its id must not stay behind (a later object could reuse it).
    llm = ensemble()
    memo: dict[int, Any] = {}
    copy.deepcopy(llm, memo)
    alive = {id(obj) for obj in memo[id(memo)]} | {id(memo)}
    assert set(memo) <= alive


def test_a_memo_given_to_deepcopy_maps_the_ensemble_to_its_copy() -> None:
    llm = ensemble()
    memo: dict[int, Any] = {}
    copied = llm.__deepcopy__(memo)
    assert copied is not llm
    assert copy.deepcopy(llm, memo) is copied


# -- token counting ---------------------------------------------------------------------


class CountingChatModel(FakeListChatModel):
    """A model with a tokenizer of its own: every word is two tokens, a tool ten."""

    def get_token_ids(self, text: str) -> list[int]:
        return [1, 2] * len(text.split())

    def get_num_tokens(self, text: str) -> int:
        # As a provider's counting endpoint would: not derived from get_token_ids.
        return 100 + 2 * len(text.split())

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Any = None) -> int:
        words = sum(len(str(m.content).split()) for m in messages)
        return 2 * words + 10 * len(tools or ())


def test_token_counting_uses_the_aggregators_own_counters() -> None:
    llm = MoAChatModel(
        proposers=[FakeListChatModel(responses=["p"])],
        aggregator=CountingChatModel(responses=["a"]).bind(temperature=0),
        layers=2,
    )
    messages = [SystemMessage("be brief"), HumanMessage("why is the sky blue")]
    assert llm.get_token_ids("one two") == [1, 2, 1, 2]
    assert llm.get_num_tokens("one two three") == 106
    assert llm.get_num_tokens_from_messages(messages) == 14
    assert llm.get_num_tokens_from_messages(messages, tools=[WEATHER_TOOL]) == 24


def test_an_aggregator_that_is_not_yet_a_chat_model_counts_with_the_ensembles_counter() -> None:
    # A configurable model becomes a chat model only when called: nothing to ask,
    # so the ensemble's own counter (custom_get_token_ids here) counts.
    llm = MoAChatModel(
        proposers=[FakeListChatModel(responses=["p"])],
        aggregator=init_chat_model(configurable_fields="any"),
        layers=2,
        custom_get_token_ids=lambda text: [7] * len(text.split()),
    )
    assert llm.get_token_ids("one two three") == [7, 7, 7]
    assert llm.get_num_tokens("one two three") == 3
    messages = [HumanMessage("why is the sky blue")]
    # The default counter counts each message as "Human: ..." (one token more).
    assert llm.get_num_tokens_from_messages(messages) == 6
    with pytest.warns(UserWarning, match="tool schemas"):
        # The tools reach the default counter, which says it ignores them.
        assert llm.get_num_tokens_from_messages(messages, tools=[WEATHER_TOOL]) == 6
