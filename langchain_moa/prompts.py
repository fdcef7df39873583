"""The aggregate-and-synthesize prompt and the injection of references."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import BaseMessage, SystemMessage

DEFAULT_AGGREGATOR_PROMPT = (
    "You have been provided with a set of responses from various open-source "
    "models to the latest user query. Your task is to synthesize these responses "
    "into a single, high-quality response. It is crucial to critically evaluate "
    "the information provided in these responses, recognizing that some of it may "
    "be biased or incorrect. Your response should not simply replicate the given "
    "answers but should offer a refined, accurate, and comprehensive reply to the "
    "instruction. Ensure your response is well-structured, coherent, and adheres "
    "to the highest standards of accuracy and reliability.\n\n"
    "Responses from models:"
)
"""The paper's aggregate-and-synthesize prompt (Wang et al., 2024, Table 1)."""

DEFAULT_RANKER_PROMPT = (
    "You have been provided with a set of responses from various models to the "
    "latest user query. Your task is to choose the single best response: the most "
    "helpful, accurate and complete one. Reply with the number of that response "
    "only, and nothing else.\n\n"
    "Responses from models:"
)
"""Prompt of the LLM-ranker baseline (paper, Figure 4): pick one, do not synthesize."""


def format_references(prompt: str, references: Sequence[str]) -> str:
    r"""Append numbered references to the aggregate-and-synthesize prompt.

    Args:
        prompt: The aggregate-and-synthesize prompt.
        references: Answers of the previous layer, in order.

    Returns:
        The prompt followed by ``"\\n{i}. {text}"`` for each reference, ``i`` from 1.
    """
    return prompt + "".join(f"\n{i}. {text}" for i, text in enumerate(references, 1))


def inject_references(
    messages: Sequence[BaseMessage], references: Sequence[str], prompt: str
) -> list[BaseMessage]:
    """Return a copy of ``messages`` with the references in the system message.

    The reference block is appended (after a blank line) to a leading system
    message, or becomes a new first system message. The input list and its
    messages are never modified. With no references the messages are returned
    unchanged (as a new list).

    Args:
        messages: The caller's conversation.
        references: Successful answers of the previous layer.
        prompt: The aggregate-and-synthesize prompt.

    Returns:
        The conversation to send to an agent of the next layer.
    """
    if not references:
        return list(messages)
    block = format_references(prompt, references)
    if messages and isinstance(messages[0], SystemMessage):
        first = messages[0]
        content = first.content
        if isinstance(content, str):
            new_content: str | list = content + "\n\n" + block
        else:
            new_content = [*content, {"type": "text", "text": "\n\n" + block}]
        return [first.model_copy(update={"content": new_content}), *messages[1:]]
    return [SystemMessage(content=block), *messages]


def fit_references(references: Sequence[str], budget: int | None) -> list[str]:
    """Cut references fairly so that together they fit ``budget`` characters.

    Short references stay whole; the longer ones share what is left equally
    (water-filling) and end with a visible ``[... truncated N characters]``
    marker. ``None`` means no budget.

    Args:
        references: The references, in order.
        budget: Total characters allowed for the reference texts.

    Returns:
        The references, cut where needed.
    """
    if budget is None or sum(len(r) for r in references) <= budget:
        return list(references)
    remaining, pending = budget, sorted(range(len(references)), key=lambda i: len(references[i]))
    cap = 0
    while pending:
        cap = remaining // len(pending)
        if len(references[pending[0]]) > cap:
            break
        remaining -= len(references[pending.pop(0)])
    cut = set(pending)
    return [
        f"{text[:cap]}[... truncated {len(text) - cap} characters]" if i in cut else text
        for i, text in enumerate(references)
    ]
