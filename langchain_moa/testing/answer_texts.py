r"""The simulator's text answers, its token counts and the reference blocks it reads.

Everything here is pure (no I/O, no clock, no randomness).

Text answers
------------
A text answer shows what the server received: the requested model name and the
*question*, which is the text of the last ``user`` message (text parts of a
list content are concatenated; ``""`` when there is no user message):

* plain: ``"{model} answers: {question}"``
* when a ``system`` (or ``developer``) message contains a Mixture-of-Agents
  reference block: ``"{model} read {n} references [{w1}, {w2}, ...] and
  answers: {question}"`` where ``w1, w2, ...`` are the first words of the
  references, in order, joined by ``", "``. Since every simulated answer starts
  with the answering model's name, the first word of a reference names the
  proposer that wrote it.
* for an aggregation strategy's request (an unfinished reference, a request
  to continue an answer, or the sequential prompt): ``"{model} read {n}
  references [{w1} ({l1} words), {w2} ({l2} words, unfinished), ...] continuing
  an answer of {N} words and answers: {question}"``, so that tests can see what
  each step read (see :func:`strategy_answer`).
* when the last message is a ``tool`` message: ``"{model} used {tool_name} ->
  {tool_result_text} and answers: {question}"`` (this takes precedence over
  references). ``tool_name`` is looked up from the assistant tool call whose id
  matches the tool message's ``tool_call_id`` (else the message's ``name``,
  else ``"tool"``).

Reference block
---------------
The block starts at the marker line ``Responses from models:`` and is followed
by references formatted exactly as ``"\n1. <text>"``, ``"\n2. <text>"``, ...
(numbers counting from 1). A reference may span several lines; parsing is
sequential: reference ``i`` ends where ``"\n{i+1}. "`` starts, and the last one
ends at the end of the system text. See :func:`parse_references`.

Tokens
------
A token is a whitespace-separated word together with the whitespace that
follows it (leading whitespace belongs to the first token), so
``"".join(split_tokens(text)) == text``. Prompt tokens are the tokens of every
message content (text parts; every non-text part counts as one token) plus the
names and arguments of assistant tool calls.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from langchain_moa.prompts import CONTINUATION_PROMPT, DEFAULT_SEQUENTIAL_PROMPT, UNFINISHED_MARKER
from langchain_moa.wire import SYSTEM_ROLES, content_text

__all__ = [
    "NON_TEXT_PART_TOKENS",
    "REFERENCES_MARKER",
    "count_tokens",
    "find_references",
    "last_user_text",
    "parse_references",
    "prompt_tokens",
    "simulated_answer",
    "split_tokens",
    "strategy_answer",
]

REFERENCES_MARKER = "Responses from models:"
"""The marker line that starts a Mixture-of-Agents reference block."""

NON_TEXT_PART_TOKENS = 1
"""Prompt tokens counted for every non-text content part (image, audio, ...)."""


def split_tokens(text: str) -> list[str]:
    """Split a text into simulated tokens.

    A token is a whitespace-separated word plus the whitespace that follows it;
    leading whitespace belongs to the first token.

    Args:
        text: Any text.

    Returns:
        The tokens; their concatenation is ``text``.
    """
    tokens = re.findall(r"\S+\s*", text)
    leading = text[: len(text) - len(text.lstrip())]
    if not tokens:
        return [text] if text else []
    if leading:
        tokens[0] = leading + tokens[0]
    return tokens


def count_tokens(text: str) -> int:
    """Count the simulated tokens of a text.

    Args:
        text: Any text.

    Returns:
        ``len(split_tokens(text))``.
    """
    return len(split_tokens(text))


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return count_tokens(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if isinstance(part, str):
            total += count_tokens(part)
        elif (
            isinstance(part, Mapping)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        ):
            total += count_tokens(part["text"])
        else:
            total += NON_TEXT_PART_TOKENS
    return total


def prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Count the simulated prompt tokens of a conversation.

    Args:
        messages: OpenAI chat messages.

    Returns:
        The tokens of every content (each non-text part counts
        :data:`NON_TEXT_PART_TOKENS`) plus the names and arguments of assistant
        tool calls.
    """
    total = 0
    for message in messages:
        total += _content_tokens(message.get("content"))
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping):
                total += count_tokens(str(function.get("name") or ""))
                arguments = function.get("arguments")
                if isinstance(arguments, str):
                    total += count_tokens(arguments)
    return total


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """Return the text of the last ``user`` message.

    Args:
        messages: OpenAI chat messages.

    Returns:
        Its text (see :func:`content_text`), or ``""`` without a user message.
    """
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def parse_references(system_text: str) -> list[str]:
    r"""Extract the Mixture-of-Agents references from a system text.

    The block starts at the first :data:`REFERENCES_MARKER` that is directly
    followed by ``"\n1. "``. Reference ``i`` starts after ``"\n{i}. "`` and ends
    where ``"\n{i+1}. "`` starts; the last one runs to the end of the text.

    The opt-in delimited format of :func:`langchain_moa.prompts.format_references`
    is read too, when its first fence comes before any such block: each
    reference is the text between ``<reference-{nonce} id="{i}">`` plus a
    newline and a newline plus ``</reference-{nonce}>``, the nonce being the
    one of the fence with ``id="1"`` (a ``truncated`` attribute is ignored).

    Args:
        system_text: The text of a system message.

    Returns:
        The reference texts in order (``[]`` without a reference block).
    """
    fence = re.search(r'<reference-([0-9a-f]{8,}) id="1"(?: truncated="\d+")?>\n', system_text)
    paper = system_text.find(f"{REFERENCES_MARKER}\n1. ")
    if fence is not None and (paper < 0 or fence.start() < paper):
        nonce = fence.group(1)
        pattern = rf'<reference-{nonce} id="\d+"(?: truncated="\d+")?>\n(.*?)\n</reference-{nonce}>'
        return re.findall(pattern, system_text[fence.start() :], flags=re.DOTALL)
    start = 0
    while True:
        at = system_text.find(REFERENCES_MARKER, start)
        if at < 0:
            return []
        position = at + len(REFERENCES_MARKER)
        if system_text.startswith("\n1. ", position):
            break
        start = position
    references: list[str] = []
    index = 1
    position += len("\n1. ")
    while True:
        following = f"\n{index + 1}. "
        end = system_text.find(following, position)
        if end < 0:
            references.append(system_text[position:])
            return references
        references.append(system_text[position:end])
        position = end + len(following)
        index += 1


def find_references(messages: Iterable[Mapping[str, Any]]) -> list[str]:
    """Return the references of the first system message that has a block.

    Args:
        messages: OpenAI chat messages.

    Returns:
        The references (see :func:`parse_references`), or ``[]``.
    """
    for message in messages:
        if message.get("role") in SYSTEM_ROLES:
            references = parse_references(content_text(message.get("content")))
            if references:
                return references
    return []


def _first_word(text: str) -> str:
    words = text.split()
    return words[0] if words else ""


def _tool_name_for(messages: Sequence[Mapping[str, Any]], index: int) -> str:
    message = messages[index]
    call_id = message.get("tool_call_id")
    if call_id is not None:
        for previous in reversed(messages[:index]):
            for call in previous.get("tool_calls") or []:
                if isinstance(call, Mapping) and call.get("id") == call_id:
                    function = call.get("function")
                    if isinstance(function, Mapping) and function.get("name"):
                        return str(function["name"])
    name = message.get("name")
    return str(name) if name else "tool"


def simulated_answer(model: str, request_body: Mapping[str, Any]) -> str:
    """Return the deterministic text answer of ``model`` to a request.

    See the module docstring for the three formats.

    Args:
        model: The model name to put in the answer.
        request_body: The chat-completion request body (only ``messages`` is
            used).

    Returns:
        The answer text.
    """
    messages = [m for m in request_body.get("messages") or [] if isinstance(m, Mapping)]
    question = last_user_text(messages)
    if messages and messages[-1].get("role") in {"tool", "function"}:
        tool_name = _tool_name_for(messages, len(messages) - 1)
        result = content_text(messages[-1].get("content"))
        return f"{model} used {tool_name} -> {result} and answers: {question}"
    strategy_note = strategy_answer(model, messages)
    if strategy_note is not None:
        return strategy_note
    references = find_references(messages)
    if references:
        words = ", ".join(_first_word(reference) for reference in references)
        return f"{model} read {len(references)} references [{words}] and answers: {question}"
    return f"{model} answers: {question}"


# ---------------------------------------------------------------------------
# Aggregation strategies (staircase, sequential): what the aggregator was shown
# ---------------------------------------------------------------------------


def strategy_answer(model: str, messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The answer to a request of an aggregation strategy, showing what it was shown.

    A request is a strategy's when a system message with references also has
    a reference marked :data:`~langchain_moa.prompts.UNFINISHED_MARKER`, a
    continuation block (:func:`~langchain_moa.prompts.continuation_block`) or
    the sequential prompt. The answer is ``"{model} read {n} references [{w1}
    ({l1} words), {w2} ({l2} words, unfinished), ...] and answers: {question}"``
    (``w`` a reference's first word, ``l`` its length in words without the
    marker), with ``" continuing an answer of {N} words"`` before ``" and
    answers"`` when it was asked to continue an answer of ``N`` words.

    Args:
        model: The model name to put in the answer.
        messages: The request's messages.

    Returns:
        The answer, or ``None`` for any other request.
    """
    for message in messages:
        if message.get("role") not in SYSTEM_ROLES:
            continue
        system, answered = _split_continuation(content_text(message.get("content")))
        references = parse_references(system)
        unfinished = [r.endswith("\n" + UNFINISHED_MARKER) for r in references]
        sequential = DEFAULT_SEQUENTIAL_PROMPT in system
        if references and (answered is not None or any(unfinished) or sequential):
            shown = ", ".join(_reference_note(r) for r in references)
            continuing = "" if answered is None else f" continuing an answer of {answered} words"
            question = last_user_text(messages)
            read = f"{model} read {len(references)} references [{shown}]{continuing}"
            return f"{read} and answers: {question}"
    return None


def _split_continuation(system: str) -> tuple[str, int | None]:
    """The system text without its continuation block, and the words of the answer so far."""
    if CONTINUATION_PROMPT not in system:
        return system, None
    system, block = system.split(CONTINUATION_PROMPT, 1)
    answered = block.split("<response-so-far>\n", 1)[-1].rsplit("\n</response-so-far>", 1)[0]
    return system.removesuffix("\n\n"), len(answered.split())


def _reference_note(reference: str) -> str:
    """``"{first word} ({n} words)"``, with ``", unfinished"`` for a marked reference."""
    text = reference.removesuffix("\n" + UNFINISHED_MARKER)
    state = ", unfinished" if text != reference else ""
    return f"{_first_word(text)} ({len(text.split())} words{state})"
