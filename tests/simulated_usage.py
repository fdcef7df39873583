"""Token usage the simulator reports, worked out independently of the product.

The simulator counts whitespace-separated words: a prompt's tokens are the
words of every message, an answer's the words of ``"<model> answers:
<question>"`` (a proposer) or ``"<model> read <n> references [<p1>, ...] and
answers: <question>"`` (after a reference block). Model names here are one
word each.
"""

from __future__ import annotations

from collections.abc import Iterable

from langchain_moa.testing import RecordedRequest
from langchain_moa.testing.answers import simulate
from tests.paper_prompt import PAPER_PROMPT_WORDS


def usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }


def counts(usage_metadata: object) -> dict[str, int]:
    """The three token counts of a ``usage_metadata`` (without the ``*_details``)."""
    assert isinstance(usage_metadata, dict), usage_metadata
    return {key: usage_metadata[key] for key in ("input_tokens", "output_tokens", "total_tokens")}


def proposer_usage(question: str) -> dict[str, int]:
    """One first-layer proposer: the question in, ``"<model> answers: <question>"`` out."""
    words = len(question.split())
    return usage(words, 2 + words)


def aggregator_usage(question: str, proposers: int) -> dict[str, int]:
    """The aggregator of a two-layer MoA under the paper's prompt, no caller system message.

    In: the prompt, ``"\\n<i>. <model> answers: <question>"`` per proposer, the
    question. Out: ``"<model> read <n> references [<p1>, ...] and answers: <question>"``.
    """
    words = len(question.split())
    references = proposers * (1 + 2 + words)
    return usage(PAPER_PROMPT_WORDS + references + words, 4 + proposers + 2 + words)


def moa_lite_usage(question: str, proposers: int) -> dict[str, int]:
    """A two-layer MoA (``proposers`` proposers, then the aggregator), summed."""
    calls = [proposer_usage(question)] * proposers + [aggregator_usage(question, proposers)]
    return {key: sum(call[key] for call in calls) for key in calls[0]}


def simulator_usage(requests: Iterable[RecordedRequest]) -> dict[str, int]:
    """The usage the simulator reported for recorded requests, by its own accounting.

    For models without an ``answer_tokens`` behaviour (that one pads answers).
    """
    turns = [simulate(request.body) for request in requests]
    return usage(sum(t.prompt_tokens for t in turns), sum(t.completion_tokens for t in turns))
