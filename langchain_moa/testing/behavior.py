"""Per-model behaviour knobs of the OpenAI simulator.

A :class:`ModelBehavior` tells :class:`~langchain_moa.testing.OpenAISimulator`
how to treat the requests for one model name: how slowly to answer, whether and
how often to fail, whether to hang, to answer garbage or an empty answer, or
to break off a stream. Models without a configured behaviour answer at once
and never fail.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _check_status(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"{name} must be an int HTTP status, got {value!r}"
        raise TypeError(msg)
    if not 400 <= value <= 599:
        msg = f"{name} must be an HTTP error status (400-599), got {value}"
        raise ValueError(msg)


def _check_seconds(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{name} must be a number of seconds, got {value!r}"
        raise TypeError(msg)
    if not math.isfinite(value) or value < 0:
        msg = f"{name} must be a finite number >= 0, got {value!r}"
        raise ValueError(msg)


def _check_count(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"{name} must be an int number of tokens or None, got {value!r}"
        raise TypeError(msg)
    if value < 0:
        msg = f"{name} must be >= 0, got {value}"
        raise ValueError(msg)


_BOOL_KNOBS = ("hang", "malformed", "echo_key", "null_content", "empty_choices", "no_finish_reason")
_EXCLUSIVE_KNOBS = (
    "malformed",
    "null_content",
    "empty_choices",
    "die_after_tokens",
    "hang_after_tokens",
)


@dataclass(frozen=True)
class ModelBehavior:
    """How the simulator answers the requests for one model name.

    All knobs default to a fast, always-successful model. They are applied in
    this order to every valid chat-completion request for the model:

    1. ``hang``: never answer.
    2. ``first_token_latency``: wait (this applies to error answers too).
    3. ``fail_first``, then ``error_status``, then ``failure_rate``: answer
       with an OpenAI-style error (whose message carries the caller's API key
       with ``echo_key``).
    4. ``malformed``: answer 200 with a body that is not valid JSON.
    5. ``die_after_tokens`` / ``hang_after_tokens``: a non-streaming request
       gets its connection dropped / is never answered; a streaming request
       gets that many tokens (``token_delay`` apart), then the connection is
       dropped / left open without another byte.
    6. Otherwise answer normally, spending ``token_delay`` per token, with the
       answer shaped by ``null_content``, ``empty_choices`` and
       ``no_finish_reason``.

    At most one of ``malformed``, ``null_content``, ``empty_choices``,
    ``die_after_tokens`` and ``hang_after_tokens`` may be set.

    Attributes:
        first_token_latency: Seconds to wait before the first streamed chunk
            (for a non-streaming request: before the response).
        token_delay: Seconds between two streamed tokens. A non-streaming
            request additionally waits ``token_delay * completion_tokens``.
        error_status: Answer every request with this HTTP status (400-599)
            and an OpenAI-style body ``{"error": {"message", "type", "code"}}``.
        retry_after: Seconds sent in a ``Retry-After`` header with every error
            answer of this model (useful with 429).
        failure_rate: Probability in ``[0, 1]`` that a request fails with
            ``failure_status``. Drawn from a per-model ``random.Random(seed)``,
            so the sequence of failures is reproducible for a given order of
            requests.
        failure_status: HTTP status used by ``failure_rate`` and
            ``fail_first`` failures.
        seed: Seed of the per-model random generator used by ``failure_rate``.
        hang: Never answer: keep the request open until the client disconnects
            or the simulator stops.
        malformed: Answer 200 with a body that is not valid JSON; a streaming
            request gets a broken server-sent-event stream.
        fail_first: The first ``fail_first`` requests for the model (counted
            from when the behaviour was set) fail with ``failure_status``;
            later ones succeed. Handy for retry tests.
        echo_key: Every error answer of the model (``fail_first``,
            ``error_status``, ``failure_rate``) has the message ``"Incorrect
            API key provided: <key>. You can find your API key at
            https://platform.openai.com/account/api-keys. (<reason>)"``, with
            the whole, unmasked key of the request's ``Authorization: Bearer``
            header (``""`` without one), as real providers do. Combine it with
            ``error_status=401`` for an authentication error. The key is only
            echoed into that response body, never logged or stored.
        null_content: Answer successfully but with ``"content": null`` and
            ``finish_reason`` ``"stop"`` (usage is still reported). A streaming
            answer sends no content deltas at all: a role chunk, a finish
            chunk, the usage chunk if asked for, then ``[DONE]``. Tool-call
            answers are unaffected (their content is null anyway).
        empty_choices: Answer successfully but with ``"choices": []`` (usage
            is still reported). A streaming answer sends one chunk per token,
            each with empty ``choices``, the usage chunk if asked for, then
            ``[DONE]``.
        die_after_tokens: Streaming: after this many tokens (all of them when
            the answer is shorter, but never the ``finish_reason``), close the
            connection abruptly: no finish chunk, no usage chunk, no
            ``[DONE]``, and an unterminated chunked body, so the client sees a
            broken stream. Non-streaming: close the connection without any
            response.
        hang_after_tokens: Streaming: after this many tokens (all of them
            when the answer is shorter, but never the ``finish_reason``), send
            nothing more and keep the connection open until the client
            disconnects or the simulator stops (then the connection is
            dropped). Non-streaming: the same as ``hang``.
        no_finish_reason: No ``finish_reason`` anywhere: a streaming answer
            ends normally with ``[DONE]`` but every chunk has
            ``finish_reason: null``; a non-streaming answer has
            ``finish_reason: null``.
        answer_tokens: Make every text answer this many tokens long (a
            shorter one is padded with filler words after the usual text, a
            longer one is kept); ``max_tokens`` still cuts it. For realistic
            token counts in cost measurements.
    """

    first_token_latency: float = 0.0
    token_delay: float = 0.0
    error_status: int | None = None
    retry_after: float | None = None
    failure_rate: float = 0.0
    failure_status: int = 500
    seed: int = 0
    hang: bool = False
    malformed: bool = False
    fail_first: int = 0
    echo_key: bool = False
    null_content: bool = False
    empty_choices: bool = False
    die_after_tokens: int | None = None
    hang_after_tokens: int | None = None
    no_finish_reason: bool = False
    answer_tokens: int | None = None

    def __post_init__(self) -> None:
        """Validate the knobs.

        Raises:
            TypeError: If a knob has the wrong type.
            ValueError: If a knob is out of range.
        """
        _check_seconds("first_token_latency", self.first_token_latency)
        _check_seconds("token_delay", self.token_delay)
        _check_seconds("retry_after", self.retry_after)
        _check_status("error_status", self.error_status)
        _check_status("failure_status", self.failure_status)
        if isinstance(self.failure_rate, bool) or not isinstance(self.failure_rate, (int, float)):
            msg = f"failure_rate must be a number, got {self.failure_rate!r}"
            raise TypeError(msg)
        if not 0.0 <= self.failure_rate <= 1.0:
            msg = f"failure_rate must be within [0, 1], got {self.failure_rate!r}"
            raise ValueError(msg)
        for name in ("seed", "fail_first"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                msg = f"{name} must be an int, got {value!r}"
                raise TypeError(msg)
        if self.fail_first < 0:
            msg = f"fail_first must be >= 0, got {self.fail_first}"
            raise ValueError(msg)
        _check_count("die_after_tokens", self.die_after_tokens)
        _check_count("hang_after_tokens", self.hang_after_tokens)
        _check_count("answer_tokens", self.answer_tokens)
        for name in _BOOL_KNOBS:
            if not isinstance(getattr(self, name), bool):
                msg = f"{name} must be a bool, got {getattr(self, name)!r}"
                raise TypeError(msg)
        shapes = [
            name
            for name in _EXCLUSIVE_KNOBS
            if getattr(self, name) is not None and getattr(self, name) is not False
        ]
        if len(shapes) > 1:
            msg = f"{' and '.join(shapes)} cannot be combined: set at most one of them"
            raise ValueError(msg)

    @classmethod
    def from_dict(cls, knobs: Mapping[str, Any]) -> ModelBehavior:
        """Build a behaviour from a mapping of knob names to values.

        Args:
            knobs: For example ``{"first_token_latency": 0.3, "fail_first": 2}``.

        Returns:
            The behaviour.

        Raises:
            TypeError: If ``knobs`` is not a mapping or a value has the wrong type.
            ValueError: If a knob name is unknown or a value is out of range.
        """
        if not isinstance(knobs, Mapping):
            msg = f"behaviour knobs must be a JSON object, got {knobs!r}"
            raise TypeError(msg)
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(knobs) - known)
        if unknown:
            msg = (
                f"unknown behaviour knob(s) {', '.join(map(repr, unknown))}; "
                f"known knobs: {', '.join(sorted(known))}"
            )
            raise ValueError(msg)
        return cls(**dict(knobs))

    def to_dict(self) -> dict[str, Any]:
        """Return the knobs as a plain dict (the inverse of :meth:`from_dict`).

        Returns:
            A mapping of every knob name to its value.
        """
        return dataclasses.asdict(self)
