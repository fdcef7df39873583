"""Exceptions raised by Mixture-of-Agents runs."""

from __future__ import annotations

import re
from collections.abc import Sequence

from langchain_moa.state import Proposal

_SECRET_PATTERNS = (
    re.compile(r"\b(?:sk|pk|rk|tgp|gsk|xai)[-_][A-Za-z0-9_\-*]{6,}"),
    re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._\-]+"),
)


def redact(text: str) -> str:
    """Mask substrings that look like API keys or bearer tokens."""
    text = _SECRET_PATTERNS[0].sub("[REDACTED]", text)
    return _SECRET_PATTERNS[1].sub(r"\1 [REDACTED]", text)


def describe_error(error: BaseException) -> str:
    """Return ``"ErrorType: message"`` for ``error``, with secrets masked."""
    message = str(error).strip()
    name = type(error).__name__
    return redact(f"{name}: {message}" if message else name)


class MoAError(Exception):
    """Base class of the errors raised by a Mixture-of-Agents run."""


class ProposersFailedError(MoAError):
    """Too few proposers of a layer answered for the run to go on.

    Attributes:
        layer: The proposer layer (from 1) that fell short.
        required: How many successful answers the layer needed.
        proposals: Every proposal of that layer, failed ones included, so no
            answer or cause is lost.
    """

    def __init__(self, layer: int, required: int, proposals: Sequence[Proposal]) -> None:
        self.layer = layer
        self.required = required
        self.proposals = list(proposals)
        failures = [p for p in self.proposals if not p.ok]
        ok = len(self.proposals) - len(failures)
        causes = "; ".join(f"{p.model} (#{p.index}): {p.error}" for p in failures)
        super().__init__(
            f"layer {layer}: {ok} of {len(self.proposals)} proposers answered, "
            f"{required} needed. Failures: {causes}"
        )

    @property
    def failures(self) -> list[Proposal]:
        """The proposals of the layer that failed."""
        return [p for p in self.proposals if not p.ok]


class AggregatorFailedError(MoAError):
    """The aggregator failed; the proposals it would have read are attached.

    Attributes:
        model: Name of the (last) aggregator model that failed.
        proposals: Every proposal of every layer.
        partial_text: The part of the answer already streamed, if any.
        failures: ``"model: error"`` of every aggregator tried, in order.
    """

    def __init__(
        self,
        model: str,
        cause: BaseException,
        proposals: Sequence[Proposal],
        *,
        partial_text: str | None = None,
        failures: Sequence[tuple[str, BaseException]] = (),
    ) -> None:
        self.model = model
        self.proposals = list(proposals)
        self.partial_text = partial_text
        self.failures = [f"{label}: {describe_error(error)}" for label, error in failures]
        message = f"aggregator {model} failed: {describe_error(cause)}"
        if partial_text is not None:
            message += (
                f" (after {len(partial_text)} characters of the answer had already been "
                "streamed; they are in .partial_text)"
            )
        earlier = self.failures[:-1]
        if earlier:
            message += f"; before it: {'; '.join(earlier)}"
        super().__init__(message)
