"""Per-call budgets: estimate a layer before it runs, and stop adding layers in time.

Before each proposer layer the ensemble estimates what the layer and the
aggregation after it will cost: prompt tokens from the inner model's own
counter where it has one (else the heuristic below), plus its completion cap.
If what was spent so far plus that estimate exceeds ``max_cost_usd`` or
``max_total_tokens``, no more proposer layers run and the aggregator reads
what the last layer wrote. If even the first layer and its aggregation cannot
fit, :class:`BudgetExceededError` is raised before any provider is called.

Heuristic: when a model cannot count tokens itself (``ChatOpenAI`` needs
``tiktoken`` data files, which may not be downloadable), a message counts
``ceil(characters / 4) + 4`` tokens. The completion cap is the call's
``max_tokens`` (or ``max_completion_tokens``), else the model's own, else
:data:`DEFAULT_COMPLETION_TOKENS`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable

from langchain_moa.cost import Prices, pricing
from langchain_moa.errors import MoAError
from langchain_moa.inner_models import chat_model_of

DEFAULT_COMPLETION_TOKENS = 1024
"""Completion tokens assumed for a call with no ``max_tokens`` anywhere."""

CHARS_PER_TOKEN = 4
"""The heuristic's characters per token."""

TOKENS_PER_MESSAGE = 4
"""The heuristic's overhead per message (role, separators)."""

_NO_COUNTER: set[tuple[type, str]] = set()
_NO_COUNTER_LOCK = threading.Lock()


class BudgetExceededError(MoAError):
    """Even the first proposer layer and the aggregation cannot fit the budget.

    Raised before any provider is called.

    Attributes:
        estimate: What the run would cost at least: ``{"usd": ..., "tokens": ...}``.
        limits: The budget: ``{"max_cost_usd": ..., "max_total_tokens": ...}``.
    """

    def __init__(self, estimate: Mapping[str, Any], limits: Mapping[str, Any]) -> None:
        self.estimate = dict(estimate)
        self.limits = dict(limits)
        over = []
        if limits.get("max_cost_usd") is not None and estimate.get("usd") is not None:
            over.append(f"${estimate['usd']:.6f} > max_cost_usd=${limits['max_cost_usd']:g}")
        unpriced = estimate.get("unpriced") or []
        if limits.get("max_cost_usd") is not None and estimate.get("usd") is None:
            over.append(
                f"max_cost_usd=${limits['max_cost_usd']:g} cannot be checked: no price for "
                f"{', '.join(unpriced)}; give it in prices={{...}}"
            )
        if limits.get("max_total_tokens") is not None and (
            estimate["tokens"] > limits["max_total_tokens"]
        ):
            over.append(
                f"{estimate['tokens']} tokens > max_total_tokens={limits['max_total_tokens']}"
            )
        super().__init__(
            "the budget cannot pay for one proposer layer and the aggregation "
            f"(estimated {'; '.join(over)}); no provider was called"
        )


@dataclass(frozen=True)
class Budget:
    """A call's budget.

    Attributes:
        max_cost_usd: Most US dollars the call may spend (``None``: no bound).
        max_total_tokens: Most tokens, input and output of every inner call.
    """

    max_cost_usd: float | None = None
    max_total_tokens: int | None = None

    @property
    def active(self) -> bool:
        """Whether there is any bound."""
        return self.max_cost_usd is not None or self.max_total_tokens is not None

    def to_dict(self) -> dict[str, Any]:
        """The bounds, for the answer's metadata."""
        return {"max_cost_usd": self.max_cost_usd, "max_total_tokens": self.max_total_tokens}

    def fits(self, usd: float | None, tokens: int) -> bool:
        """Whether spending ``usd`` dollars and ``tokens`` tokens stays within the budget."""
        if self.max_total_tokens is not None and tokens > self.max_total_tokens:
            return False
        return self.max_cost_usd is None or (usd is not None and usd <= self.max_cost_usd)


@dataclass(frozen=True)
class Estimate:
    """Estimated spend of some calls.

    Attributes:
        tokens: Input plus output tokens.
        usd: US dollars (``None``: a model has no price).
        unpriced: Models without a price.
    """

    tokens: int = 0
    usd: float | None = 0.0
    unpriced: tuple[str, ...] = ()

    def __add__(self, other: Estimate) -> Estimate:
        usd = None if self.usd is None or other.usd is None else self.usd + other.usd
        unpriced = tuple(dict.fromkeys((*self.unpriced, *other.unpriced)))
        return Estimate(self.tokens + other.tokens, usd, unpriced)

    def to_dict(self) -> dict[str, Any]:
        """For the answer's metadata."""
        return {"usd": None if self.usd is None else round(self.usd, 10), "tokens": self.tokens}


def heuristic_tokens(messages: Sequence[BaseMessage]) -> int:
    """Tokens of ``messages`` by the heuristic: characters / 4, plus 4 per message."""
    return sum(
        math.ceil(len(str(m.content)) / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE for m in messages
    )


def prompt_tokens(model: Runnable, messages: Sequence[BaseMessage]) -> int:
    """Input tokens of ``messages`` for ``model``: its own counter, else the heuristic.

    A counter that fails once (no tokenizer data, no network) is not tried
    again for that model class and name in this process.
    """
    chat = chat_model_of(model)
    if chat is None:
        return heuristic_tokens(messages)
    key = (type(chat), str(getattr(chat, "model_name", None) or getattr(chat, "model", "")))
    with _NO_COUNTER_LOCK:
        known_broken = key in _NO_COUNTER
    if not known_broken:
        try:
            return int(chat.get_num_tokens_from_messages(list(messages)))
        except Exception:
            with _NO_COUNTER_LOCK:
                _NO_COUNTER.add(key)
    return heuristic_tokens(messages)


def completion_cap(model: Runnable, call_kwargs: Mapping[str, Any]) -> int:
    """The most output tokens a call may produce (see the module docstring)."""
    for key in ("max_tokens", "max_completion_tokens"):
        value = call_kwargs.get(key)
        if isinstance(value, int) and value > 0:
            return value
    bound = getattr(model, "kwargs", {}) or {}
    chat = chat_model_of(model)
    for source in (bound, chat):
        for key in ("max_tokens", "max_completion_tokens"):
            value = source.get(key) if isinstance(source, Mapping) else getattr(source, key, None)
            if isinstance(value, int) and value > 0:
                return value
    return DEFAULT_COMPLETION_TOKENS


def call_estimate(
    model: Runnable,
    label: str,
    input_tokens: int,
    output_tokens: int,
    prices: Prices | None,
) -> Estimate:
    """The estimate of one call with these token counts."""
    rates = pricing(model, prices).rates
    usd = None if rates is None else rates.cost(input_tokens, output_tokens)
    return Estimate(input_tokens + output_tokens, usd, () if rates is not None else (label,))


def spent(
    records: Sequence[tuple[Runnable | None, str, Mapping[str, Any] | None]], prices: Prices | None
) -> Estimate:
    """What calls already made cost: ``(model, label, usage)`` per call."""
    total = Estimate()
    for model, label, usage in records:
        tokens = int((usage or {}).get("total_tokens") or 0)
        if model is None:
            total += Estimate(tokens, None, (label,))
            continue
        price = pricing(model, prices)
        usd = price.cost(usage)
        total += Estimate(tokens, usd, () if usd is not None else (label,))
    return total
