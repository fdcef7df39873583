"""The ensemble and LangChain's LLM cache: a complete key, and no degraded answers kept.

LangChain stores whatever ``_generate`` returns; ``MoAChatModel`` looks the cache
up and updates it itself, through a twin of the ensemble whose own caching is
off, so that an answer with a failed proposer or a fallback aggregator is
never kept.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any

from langchain_core.caches import BaseCache
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel
from langchain_core.load import dumps
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult
from langchain_core.runnables import Runnable

from langchain_moa.aggregation import AggregationStrategy
from langchain_moa.inner_models import model_identity

if TYPE_CHECKING:
    from langchain_moa.chat_model import MoAChatModel

NOT_IN_CACHE_KEY = frozenset(
    {
        "cache",
        "callbacks",
        "callback_manager",
        "custom_get_token_ids",
        "disable_streaming",
        "inner_callbacks",
        "metadata",
        "profile",
        "rate_limiter",
        "streaming",
        "tags",
        "verbose",
    }
)
"""Fields that do not change an answer: left out of the cache key."""


def active_cache(model: BaseChatModel) -> BaseCache | None:
    """The LLM cache LangChain would use for ``model``, if any."""
    if model.cache is False:
        return None
    return model.cache if isinstance(model.cache, BaseCache) else get_llm_cache()


def cache_key(
    model: BaseChatModel, messages: list[BaseMessage], stop: list[str] | None, kwargs: Any
) -> tuple[str, str]:
    """LangChain's cache key: the messages without ids, and the settings."""
    normalized = [m.model_copy(update={"id": None}) if m.id else m for m in messages]
    return dumps(normalized), model._get_llm_string(stop=stop, **kwargs)


def uncached_twin(model: MoAChatModel) -> MoAChatModel:
    """``model`` with LangChain's own caching off, sharing its compiled graph."""
    twin = BaseChatModel.__copy__(model)
    twin.__dict__["cache"] = False
    return twin  # type: ignore[return-value]


def degraded(result: ChatResult) -> bool:
    """Whether an answer is degraded (a proposer failed, or the fallback answered)."""
    return any(g.message.response_metadata.get("degraded") for g in result.generations)


def setting_identity(value: Any) -> Any:
    """A setting as it enters the cache key: models by identity, long text hashed."""
    if isinstance(value, Runnable):
        return model_identity(value)
    if isinstance(value, AggregationStrategy):
        return value.identity
    if isinstance(value, (list, tuple)):
        return [setting_identity(v) for v in value]
    if isinstance(value, str) and len(value) > 64:
        return "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value
