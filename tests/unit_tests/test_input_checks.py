"""Bad input is refused up front, with an error that names the problem and the fix.

The checks run before any provider is called, for the chat model and for the
server alike (both call ``langchain_moa.validation``).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableLambda

from langchain_moa import MoAChatModel
from langchain_moa.validation import CALL_KWARGS, check_call_kwargs, check_conversation
from tests.unit_tests.fakes import RecordingChatModel

# name: (lowest accepted value, highest refused value below it, integer only)
RANGES: dict[str, tuple[float, float, bool]] = {
    "temperature": (0, -0.001, False),
    "top_p": (0, -0.001, False),
    "frequency_penalty": (-2, -2.001, False),
    "presence_penalty": (-2, -2.001, False),
    "max_tokens": (1, 0, True),
    "max_completion_tokens": (1, 0, True),
    "top_logprobs": (0, -1, True),
    "seed": (-(2**63), -(2**63) - 1, True),
    "max_total_tokens": (1, 0, True),
    "max_cost_usd": (0, -0.001, False),
}


def refuses(error: type[Exception], message: str, **kwargs: Any) -> None:
    with pytest.raises(error, match=re.escape(message)):
        check_call_kwargs(kwargs)


def refused(error: type[Exception], call: Any, *args: Any) -> str:
    """The message ``call(*args)`` fails with."""
    with pytest.raises(error) as caught:
        call(*args)
    return str(caught.value)


@pytest.mark.parametrize("name", list(RANGES))
def test_each_generation_argument_accepts_its_range_and_refuses_below_it(name: str) -> None:
    low, below, integer = RANGES[name]
    check_call_kwargs({name: low})
    check_call_kwargs({name: low + 1})
    check_call_kwargs({name: None})  # None means "not given"
    shown = f"{low:g}"
    refuses(
        ValueError, f"{name} must be a finite number >= {shown}, got {below!r}", **{name: below}
    )
    if integer:
        refuses(TypeError, f"{name} must be an integer, got {float(low)!r}", **{name: float(low)})
    else:
        check_call_kwargs({name: low + 0.5})
        refuses(ValueError, f"{name} must be a finite number", **{name: float("inf")})
        refuses(ValueError, f"{name} must be a finite number", **{name: float("nan")})
        refuses(TypeError, f"{name} must be a number, got '1'", **{name: "1"})
    refuses(
        TypeError,
        f"{name} must be {'an integer' if integer else 'a number'}, got False",
        **{name: False},
    )


def test_an_unknown_call_argument_is_named_with_the_supported_ones() -> None:
    supported = ", ".join(sorted(CALL_KWARGS - {"stream"}))
    with pytest.raises(TypeError) as caught:
        check_call_kwargs({"temprature": 0.2, "colour": "red", "temperature": 0.2})
    assert str(caught.value) == (
        "MoAChatModel got unsupported call arguments ['colour', 'temprature']; per-call "
        f"arguments apply to the aggregator and are: {supported} (set temperature/max_tokens "
        "on the ensemble to apply them to every inner call)"
    )
    assert "stream" not in supported.split(", ")
    check_call_kwargs(dict.fromkeys(CALL_KWARGS - RANGES.keys() - {"stop"}, "x"))


def test_model_cannot_be_overridden_per_call() -> None:
    for model in ("x", None):
        assert refused(TypeError, check_call_kwargs, {"model": model}) == (
            "MoAChatModel has no single model to override with model=...; "
            "configure the proposers and the aggregator instead"
        )


@pytest.mark.parametrize(
    ("kwargs", "stop"),
    [
        ({"stop": "END"}, None),
        ({"stop": ["END", 3]}, None),
        ({}, "END"),
        ({}, ("END", b"x")),
        ({"stop": "END"}, ["fine"]),
    ],
)
def test_stop_must_be_a_list_of_strings_however_it_is_passed(kwargs: dict, stop: Any) -> None:
    given = kwargs.get("stop", stop)
    with pytest.raises(
        TypeError, match=re.escape(f"stop must be a list of strings, got {given!r}")
    ):
        check_call_kwargs(kwargs, stop)


@pytest.mark.parametrize(
    ("kwargs", "stop"), [({"stop": ["END"]}, None), ({}, ["END"]), ({"stop": None}, None), ({}, ())]
)
def test_a_list_of_stop_strings_is_accepted(kwargs: dict, stop: Any) -> None:
    check_call_kwargs(kwargs, stop)


def test_a_conversation_needs_a_message_and_a_user() -> None:
    assert refused(ValueError, check_conversation, []) == (
        "MoAChatModel got an empty message list: give at least one message"
    )
    no_user = [SystemMessage("s"), AIMessage("a"), ChatMessage(role="assistant", content="c")]
    assert refused(ValueError, check_conversation, no_user) == (
        "the conversation has no user message: the proposers would have nothing to answer"
    )
    check_conversation([*no_user, ChatMessage(role="user", content="q")])
    check_conversation([*no_user, HumanMessage("q")])


def test_content_blocks_of_every_supported_type_pass_and_others_are_named() -> None:
    supported = [
        "audio", "file", "image", "image_url", "input_audio", "non_standard", "reasoning",
        "text", "text-plain", "thinking", "tool_call", "tool_use", "video",
    ]  # fmt: skip
    blocks = ["plain text", *({"type": kind} for kind in supported)]
    check_conversation([HumanMessage(content=blocks)])  # type: ignore[arg-type]
    bad = [HumanMessage("q"), AIMessage(content=["fine", {"type": "hologram"}])]
    with pytest.raises(ValueError) as caught:
        check_conversation(bad)  # type: ignore[arg-type]
    assert str(caught.value) == (
        "message 1 (ai) has an unsupported content block of type 'hologram'; "
        f"supported types: {', '.join(supported)}"
    )
    untyped = [HumanMessage(content=[{"text": "no type"}])]
    with pytest.raises(
        ValueError, match="message 0 \\(human\\) has an unsupported content block of type None"
    ):
        check_conversation(untyped)  # type: ignore[arg-type]


def test_text_that_is_not_unicode_is_refused_naming_where() -> None:
    messages = [HumanMessage("fine"), SystemMessage("ok \ud800 then")]
    with pytest.raises(ValueError) as caught:
        check_conversation(messages)
    assert str(caught.value) == (
        "message 1 (system) holds text that is not valid Unicode (a lone surrogate at "
        "character 4); it cannot be sent to a provider"
    )
    assert caught.value.__cause__ is None
    check_conversation([HumanMessage("émoji 🙂 and ünïcode")])


def fake(name: str) -> RecordingChatModel:
    return RecordingChatModel(name=name)


NOT_A_LIST = "proposers must be a list of chat models or a list of lists of chat models"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, NOT_A_LIST),
        ({"proposers": fake("a")}, NOT_A_LIST),
        ({"proposers": 3}, NOT_A_LIST),
        ({"proposers": []}, "proposers is empty: give at least one proposer model"),
        (
            {"proposers": [fake("a"), [fake("b")]]},
            "proposers mixes models and lists: give a list of models or a list of lists",
        ),
        (
            {"proposers": [[fake("a")], []]},
            "proposer layer 2 is empty: every layer needs a proposer",
        ),
        ({"proposers": [fake("a"), "gpt-4o"]}, "proposer at position 1 is a str, not a chat model"),
        (
            {"proposers": [[fake("a")], [fake("b"), 3]]},
            "proposer at layer 2, position 1 is a int, not a chat model",
        ),
        (
            {"proposers": [fake("a")], "fallback_aggregator": "x"},
            "fallback_aggregator is a str, not a chat model",
        ),
        ({"proposers": [fake("a")], "aggregator": 3}, "aggregator is a int, not a chat model"),
        (
            {"proposers": [fake("a")], "selection_judge": RunnableLambda(str)},
            "selection_judge is a RunnableLambda, not a chat model",
        ),
    ],
)
def test_a_line_up_that_is_not_chat_models_is_refused_naming_where(
    settings: dict, message: str
) -> None:
    error = refused(ValueError, lambda: MoAChatModel(**{"aggregator": fake("agg"), **settings}))
    assert f"Value error, {message} [type=value_error" in error


def test_optional_models_may_be_left_out() -> None:
    llm = MoAChatModel(proposers=[fake("a")], aggregator=fake("agg"), fallback_aggregator=None)
    assert llm.invoke("q").content == "agg: answer 1"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"select_references": 1},
            'select_references with selection_strategy="diverse" needs selection_embeddings '
            '(any LangChain Embeddings), or choose selection_strategy="judge" or "first"',
        ),
        (
            {"select_references": 1, "selection_strategy": "judge"},
            'select_references with selection_strategy="judge" needs selection_judge '
            "(a chat model)",
        ),
        (
            {"select_references": 1, "selection_strategy": "first", "min_proposers": 2},
            'select_references=1 with selection_strategy="first" keeps fewer answers than '
            "min_proposers=2 requires",
        ),
    ],
)
def test_reference_selection_without_what_it_needs_is_refused(settings: dict, message: str) -> None:
    error = refused(
        ValueError,
        lambda: MoAChatModel(proposers=[fake("a"), fake("b")], aggregator=fake("agg"), **settings),
    )
    assert f"Value error, {message} [type=value_error" in error


@pytest.mark.parametrize(
    "settings",
    [
        {"select_references": 2, "selection_strategy": "first", "min_proposers": 2},
        {"select_references": 1, "selection_strategy": "judge", "selection_judge": fake("judge")},
        {"selection_strategy": "judge"},
        {"selection_judge": fake("judge")},
    ],
)
def test_reference_selection_with_what_it_needs_is_accepted(settings: dict) -> None:
    MoAChatModel(proposers=[fake("a"), fake("b")], aggregator=fake("agg"), **settings)
