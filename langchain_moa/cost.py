"""Prices of inner model calls in US dollars.

Each inner model's price comes from the user's ``prices`` table when it names
the model, else from ``genai-prices`` (a maintained price database, installed
with the ``cost`` extra), looked up by the model's provider and name: the base
URL the model sends its requests to when it has one (so a ``ChatOpenAI`` on
Together is priced as Together, and one on a local server has no price), else
the provider of its LangSmith parameters. A price that cannot be found is
``None``, with the reason; it is never guessed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable

from langchain_moa._compat import ls_params, openai_root_async_client
from langchain_moa.errors import redact
from langchain_moa.inner_models import chat_model_of, model_label

PER_MILLION = 1_000_000
"""Prices are given in US dollars per million tokens."""

INSTALL_COST_EXTRA = "install langchain-moa[cost]"
"""The reason given for a missing price when ``genai-prices`` is not installed."""

_PROBE_TOKENS = 1_000
_MAX_CACHED = 1_024

Prices = Mapping[str, Mapping[str, float]]
"""The user's price table: model name to ``{"input": ..., "output": ...}`` (USD per
million tokens; ``"cache_read"`` optional)."""


@dataclass(frozen=True)
class Rates:
    """A model's price in US dollars per million tokens.

    Attributes:
        input: Per million input (prompt) tokens.
        output: Per million output (completion) tokens.
        cache_read: Per million input tokens read from the provider's cache
            (``None``: charged as ``input``).
    """

    input: float
    output: float
    cache_read: float | None = None

    def cost(
        self, input_tokens: float, output_tokens: float, cache_read_tokens: float = 0
    ) -> float:
        """The price of these token counts in US dollars."""
        read = min(cache_read_tokens, input_tokens)
        cache_rate = self.input if self.cache_read is None else self.cache_read
        return (
            (input_tokens - read) * self.input + read * cache_rate + output_tokens * self.output
        ) / PER_MILLION


@dataclass(frozen=True)
class Pricing:
    """How one inner model's calls are priced.

    Attributes:
        label: The model's name in the answer's metadata.
        rates: Its price, or ``None`` when it is not known.
        source: ``"prices"`` (the user's table) or ``"genai-prices"``.
        reason: Why the price is not known.
        lookup: ``genai-prices`` arguments (``model_ref``, ``provider_id`` or
            ``provider_api_url``), used to price each call exactly.
    """

    label: str
    rates: Rates | None
    source: str | None = None
    reason: str | None = None
    lookup: Mapping[str, str] | None = None

    @property
    def known(self) -> bool:
        """Whether the price is known."""
        return self.rates is not None

    def cost(self, usage: Mapping[str, Any] | None) -> float | None:
        """The price of one call in US dollars.

        Args:
            usage: The call's ``usage_metadata`` (``None``: nothing reported,
                which costs 0 when the price is known).

        Returns:
            US dollars, or ``None`` if the price is not known.
        """
        if self.rates is None:
            return None
        if not usage:
            return 0.0
        input_tokens = int(usage.get("input_tokens") or 0)
        output_tokens = int(usage.get("output_tokens") or 0)
        cache_read = int((usage.get("input_token_details") or {}).get("cache_read") or 0)
        if self.lookup is not None:
            exact = _genai_cost(self.lookup, input_tokens, output_tokens, cache_read)
            if exact is not None:
                return exact
        return self.rates.cost(input_tokens, output_tokens, cache_read)


def check_prices(prices: Any) -> None:
    """Refuse a price table that is not ``{model: {"input": x, "output": y}}``.

    Raises:
        ValueError: A malformed table, a missing or negative price.
    """
    if prices is None:
        return
    if not isinstance(prices, Mapping):
        msg = 'prices must map model names to {"input": ..., "output": ...} (USD per 1M tokens)'
        raise ValueError(msg)
    for name, entry in prices.items():
        if not isinstance(name, str) or not isinstance(entry, Mapping):
            msg = f'prices[{name!r}] must be {{"input": ..., "output": ...}} (USD per 1M tokens)'
            raise ValueError(msg)
        unknown = sorted(set(entry) - {"input", "output", "cache_read"})
        if unknown or not {"input", "output"} <= set(entry):
            msg = (
                f'prices[{name!r}] needs "input" and "output" (and may have "cache_read"), '
                f"got {sorted(entry)}"
            )
            raise ValueError(msg)
        for key, value in entry.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not value >= 0 or value == float("inf"):
                msg = f"prices[{name!r}][{key!r}] must be a finite number >= 0, got {value!r}"
                raise ValueError(msg)


def _names(model: Runnable, chat: BaseChatModel | None) -> list[str]:
    """Names under which the user's table may list the model."""
    names = [model_label(model)]
    if chat is not None:
        names.append(str(ls_params(chat).get("ls_model_name") or ""))
        for attribute in ("model_name", "model"):
            value = getattr(chat, attribute, None)
            names.append(value if isinstance(value, str) else "")
    return [name for name in dict.fromkeys(names) if name]


def base_url(chat: BaseChatModel) -> str | None:
    """The URL the model sends its requests to, if it has one."""
    root = openai_root_async_client(chat)
    if root is not None and getattr(root, "base_url", None) is not None:
        return str(root.base_url)
    for attribute in ("openai_api_base", "base_url", "anthropic_api_url", "api_base"):
        value = getattr(chat, attribute, None)
        if isinstance(value, str) and value:
            return value
    return None


def _lookup_arguments(chat: BaseChatModel, name: str) -> dict[str, str]:
    url = base_url(chat)
    if url is not None:
        return {"model_ref": name, "provider_api_url": url}
    provider = ls_params(chat).get("ls_provider")
    if isinstance(provider, str) and provider:
        return {"model_ref": name, "provider_id": provider}
    return {"model_ref": name}


def _genai_cost(
    lookup: Mapping[str, str], input_tokens: int, output_tokens: int, cache_read: int
) -> float | None:
    try:
        from genai_prices import Usage, calc_price

        usage = Usage(
            input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cache_read
        )
        return float(calc_price(usage, **lookup).total_price)  # type: ignore[arg-type]
    except Exception:
        return None


def _genai_rates(lookup: Mapping[str, str]) -> Rates:
    """The model's rates per million tokens, read from ``genai-prices``.

    Raises:
        ImportError: ``genai-prices`` is not installed.
        LookupError: It knows no such provider or model.
    """
    from genai_prices import Usage, calc_price

    def per_million(**tokens: int) -> float:
        price = calc_price(Usage(**tokens), **lookup)  # type: ignore[arg-type]
        return float(price.total_price) * PER_MILLION / _PROBE_TOKENS

    rates = Rates(
        input=per_million(input_tokens=_PROBE_TOKENS),
        output=per_million(output_tokens=_PROBE_TOKENS),
    )
    cache = per_million(input_tokens=_PROBE_TOKENS, cache_read_tokens=_PROBE_TOKENS)
    return Rates(rates.input, rates.output, cache if cache != rates.input else None)


def _resolve(model: Runnable, prices: Prices | None) -> Pricing:
    chat = chat_model_of(model)
    label = model_label(model)
    for name in _names(model, chat):
        entry = (prices or {}).get(name)
        if entry is not None:
            rates = Rates(float(entry["input"]), float(entry["output"]), entry.get("cache_read"))
            return Pricing(label, rates, source="prices")
    if chat is None:
        return Pricing(label, None, reason=f"{label} is not a chat model: give its price in prices")
    name = str(ls_params(chat).get("ls_model_name") or getattr(chat, "model_name", "") or label)
    lookup = _lookup_arguments(chat, name)
    try:
        rates = _genai_rates(lookup)
    except ImportError:
        return Pricing(label, None, reason=INSTALL_COST_EXTRA)
    except (LookupError, ValueError):
        where = lookup.get("provider_api_url") or lookup.get("provider_id") or "any provider"
        reason = (
            f"genai-prices has no price for {name!r} at {redact(where)}; "
            "give it in prices={...} (USD per million tokens)"
        )
        return Pricing(label, None, reason=reason)
    return Pricing(label, rates, source="genai-prices", lookup=lookup)


_CACHE: dict[tuple[int, str], tuple[Runnable, Pricing]] = {}
_CACHE_LOCK = threading.Lock()


def pricing(model: Runnable, prices: Prices | None = None) -> Pricing:
    """How ``model``'s calls are priced (looked up once per model and table).

    Args:
        model: An inner model (a chat model or a wrapper of one).
        prices: The user's table, which wins over ``genai-prices``.

    Returns:
        The pricing; its ``rates`` are ``None`` when the price is unknown.
    """
    key = (id(model), json.dumps(prices or {}, sort_keys=True, default=str))
    with _CACHE_LOCK:
        known = _CACHE.get(key)
        if known is not None and known[0] is model:
            return known[1]
    resolved = _resolve(model, prices)
    with _CACHE_LOCK:
        if len(_CACHE) >= _MAX_CACHED:
            _CACHE.clear()
        _CACHE[key] = (model, resolved)
    return resolved


def public_prices(models: list[str], provider: str) -> dict[str, dict[str, float]]:
    """Public prices of named models at a provider, as a ``prices`` table.

    For pricing models served elsewhere (a local server, the simulator) as if
    they ran at ``provider``: ``MoAChatModel(..., prices=public_prices([...],
    "together"))``.

    Args:
        models: Model names as the provider spells them.
        provider: A ``genai-prices`` provider id (``"openai"``, ``"together"``...).

    Returns:
        ``{model: {"input": ..., "output": ...}}`` in USD per million tokens.

    Raises:
        ImportError: ``genai-prices`` is not installed.
        LookupError: It has no price for one of the models.
    """
    table: dict[str, dict[str, float]] = {}
    for name in models:
        rates = _genai_rates({"model_ref": name, "provider_id": provider})
        table[name] = {"input": rates.input, "output": rates.output}
    return table
