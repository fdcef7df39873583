"""What a :class:`ModelBehavior` does to a request: its fault plan and its answer's shape.

Everything here is pure and knows no HTTP: :mod:`langchain_moa.testing.handlers`
asks :func:`plan_request` whether a request fails, and with what, then applies
the shaping functions to the answer it sends. Latency, hangs, dropped
connections and malformed bodies are the handlers' part.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Any

from langchain_moa.testing.answers import SimulatedTurn
from langchain_moa.testing.behavior import ModelBehavior

__all__ = [
    "DEFAULT_BEHAVIOR",
    "FaultPlan",
    "ModelState",
    "echo_key_message",
    "plan_request",
    "shape_completion",
    "shape_stream",
    "stream_cut",
    "token_chunks",
]

DEFAULT_BEHAVIOR = ModelBehavior()
"""The behaviour of a model nobody configured: answer at once, never fail."""

KEY_HELP_URL = "https://platform.openai.com/account/api-keys"
"""Where a provider's "incorrect API key" message sends the reader."""


@dataclass
class ModelState:
    """A configured model: its behaviour and what that behaviour counts.

    Attributes:
        behavior: The behaviour.
        rng: The generator of ``failure_rate`` (seeded with ``behavior.seed``).
        requests: Requests planned so far (``fail_first`` counts them).
    """

    behavior: ModelBehavior
    rng: random.Random
    requests: int = 0

    @classmethod
    def fresh(cls, behavior: ModelBehavior) -> ModelState:
        """A state that has seen no request, its generator newly seeded."""
        return cls(behavior=behavior, rng=random.Random(behavior.seed))  # noqa: S311


@dataclass(frozen=True)
class FaultPlan:
    """How the simulator treats one request.

    Attributes:
        behavior: The model's behaviour (latency, hangs, broken streams ...).
        status: The HTTP error status to answer with, or ``None`` to answer.
        message: The error message (``""`` without an error).
    """

    behavior: ModelBehavior
    status: int | None = None
    message: str = ""


def plan_request(state: ModelState | None, model: str) -> FaultPlan:
    """Count a request of ``model`` and decide whether it fails.

    The first ``fail_first`` requests fail with ``failure_status``; then
    ``error_status`` fails every request; then ``failure_rate`` fails at
    random. Not thread-safe: the caller holds the lock that guards ``state``.

    Args:
        state: The model's state (``None``: a model nobody configured).
        model: The model name, for the message.

    Returns:
        The plan.
    """
    if state is None:
        return FaultPlan(DEFAULT_BEHAVIOR)
    state.requests += 1
    behavior = state.behavior
    if state.requests <= behavior.fail_first:
        return FaultPlan(
            behavior,
            behavior.failure_status,
            f"simulated failure {state.requests} of the first "
            f"{behavior.fail_first} requests for model {model!r}",
        )
    if behavior.error_status is not None:
        return FaultPlan(behavior, behavior.error_status, f"simulated error of model {model!r}")
    if behavior.failure_rate > 0 and state.rng.random() < behavior.failure_rate:
        return FaultPlan(
            behavior, behavior.failure_status, f"simulated random failure of model {model!r}"
        )
    return FaultPlan(behavior)


def echo_key_message(authorization: str, reason: str) -> str:
    """A provider-style error message that leaks the caller's API key.

    Args:
        authorization: The request's ``Authorization`` header (``""``
            without one); the key is what follows ``Bearer``, else the whole
            value. It is only ever put into the message returned here.
        reason: Why the request failed, appended in parentheses.

    Returns:
        The message.
    """
    header = authorization
    scheme, _, key = header.partition(" ")
    if scheme.lower() == "bearer":
        header = key.strip()
    return (
        f"Incorrect API key provided: {header}. You can find your API key at "
        f"{KEY_HELP_URL}. ({reason})"
    )


def shape_completion(
    response: dict[str, Any], turn: SimulatedTurn, behavior: ModelBehavior
) -> dict[str, Any]:
    """Apply ``empty_choices``, ``null_content`` and ``no_finish_reason`` to a completion.

    Args:
        response: The ``chat.completion`` body (changed in place).
        turn: The simulated turn.
        behavior: The model's behaviour.

    Returns:
        The body.
    """
    if behavior.empty_choices:
        response["choices"] = []
        return response
    choice = response["choices"][0]
    if behavior.null_content and turn.tool_call is None:
        choice["message"]["content"] = None
        choice["finish_reason"] = "stop"
    if behavior.no_finish_reason:
        choice["finish_reason"] = None
    return response


def _null_content_chunks(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace the token chunks by a content-less role chunk and a finish chunk."""
    role = copy.deepcopy(chunks[0])
    role["choices"][0].update(delta={"role": "assistant", "content": None}, finish_reason=None)
    finish = copy.deepcopy(chunks[0])
    finish["choices"][0].update(delta={}, finish_reason="stop")
    return [role, finish, *(chunk for chunk in chunks if not chunk["choices"])]


def shape_stream(
    chunks: list[dict[str, Any]], turn: SimulatedTurn, behavior: ModelBehavior
) -> list[dict[str, Any]]:
    """Apply ``null_content``, ``empty_choices`` and ``no_finish_reason`` to a stream.

    Args:
        chunks: The ``chat.completion.chunk`` bodies (changed in place).
        turn: The simulated turn.
        behavior: The model's behaviour.

    Returns:
        The chunks to send.
    """
    if behavior.null_content and turn.tool_call is None:
        chunks = _null_content_chunks(chunks)
    for chunk in chunks:
        if behavior.empty_choices:
            chunk["choices"] = []
        if behavior.no_finish_reason:
            for choice in chunk["choices"]:
                choice["finish_reason"] = None
    return chunks


def stream_cut(behavior: ModelBehavior) -> int | None:
    """After how many tokens a stream breaks off or falls silent (``None``: it does not)."""
    if behavior.die_after_tokens is not None:
        return behavior.die_after_tokens
    if behavior.hang_after_tokens is not None:
        return behavior.hang_after_tokens
    return None


def token_chunks(chunks: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` token chunks, none carrying a ``finish_reason``.

    Args:
        chunks: The stream's chunks (changed in place).
        limit: How many token chunks to keep.

    Returns:
        The chunks to send before the stream breaks.
    """
    tokens = [chunk for chunk in chunks if chunk["choices"]][:limit]
    for chunk in tokens:
        chunk["choices"][0]["finish_reason"] = None
    return tokens
