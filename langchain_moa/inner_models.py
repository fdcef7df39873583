"""The chat models inside an ensemble: names, identities, wrappers and copies.

An inner model is a ``BaseChatModel`` or a runnable wrapping one: ``.bind(...)``,
``.with_retry()``, ``.with_config(...)``, or a configurable ``init_chat_model()``.
Wrappers are kept: tools and arguments are bound to the chat model inside
them, so the wrapper's own behaviour (retries, bound arguments) still applies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable
from langchain_core.runnables.base import RunnableBindingBase

from langchain_moa._compat import llm_string, ls_model_name

InnerModel = Runnable
"""A chat model, or a runnable that wraps one (``.bind``, ``.with_retry``, ...)."""


def chat_model_of(model: Runnable) -> BaseChatModel | None:
    """The chat model inside ``model`` (``model`` itself if it is one)."""
    while isinstance(model, RunnableBindingBase):
        model = model.bound
    if isinstance(model, BaseChatModel):
        return model
    return None


def is_inner_model(value: Any) -> bool:
    """Whether ``value`` can be a proposer or aggregator: a chat model or a wrapper.

    A configurable ``init_chat_model()`` (not a chat model until called) counts.
    """
    if not isinstance(value, Runnable):
        return False
    return chat_model_of(value) is not None or hasattr(value, "bind_tools")


def rewrap(model: Runnable, change: Callable[[Any], Runnable]) -> Runnable:
    """Apply ``change`` to the model inside ``model``'s wrappers, keeping them.

    ``change`` gets the innermost chat model (or the configurable model).
    """
    if isinstance(model, RunnableBindingBase):
        return model.model_copy(update={"bound": rewrap(model.bound, change)})
    return change(model)


def bind_tools(model: Runnable, tools: list[dict[str, Any]], **kwargs: Any) -> Runnable:
    """``bind_tools`` through wrappers.

    Raises:
        NotImplementedError: The model cannot take tools.
    """

    def change(inner: Any) -> Runnable:
        if not hasattr(inner, "bind_tools"):
            msg = f"{model_label(model)} cannot take tools (it has no bind_tools)"
            raise NotImplementedError(msg)
        return inner.bind_tools(tools, **kwargs)

    return rewrap(model, change)


def with_settings(model: Runnable, **updates: Any) -> Runnable:
    """A copy of ``model`` with the inner chat model's fields ``updates`` that it has.

    Fields the chat model does not have are skipped (e.g. ``stream_usage`` on a
    model that always reports usage).
    """

    def change(inner: Any) -> Runnable:
        if not isinstance(inner, BaseChatModel):
            return inner
        fields = type(inner).model_fields
        changed = {k: v for k, v in updates.items() if k in fields and getattr(inner, k) != v}
        return inner.model_copy(update=changed) if changed else inner

    return rewrap(model, change)


def model_label(model: Runnable) -> str:
    """Return a short human-readable name for ``model`` (e.g. ``gpt-4o-mini``).

    An explicit ``name=`` given to the model wins, then its model name.
    """
    inner = chat_model_of(model)
    # A configurable model builds a chat model whenever an attribute it lacks is
    # read (with the config of the LangGraph node it is read in): read its own.
    explicit = model.name if inner is not None else vars(model).get("name")
    if explicit:
        return explicit
    if inner is None:
        default = getattr(model, "_default_config", None) or {}
        configured = default.get("model") if isinstance(default, dict) else None
        return configured if isinstance(configured, str) else type(model).__name__
    if inner.name:
        return inner.name
    for candidate in (
        ls_model_name(inner),
        getattr(inner, "model_name", None),
        getattr(inner, "model", None),
    ):
        if isinstance(candidate, str) and candidate:
            return candidate
    return inner._llm_type


def model_identity(model: Runnable) -> str:
    """Return a stable identity of ``model``'s configuration, free of secrets.

    Built from the chat model's own cache key (``_get_llm_string``), which
    LangChain computes without secret values, plus what its wrappers bind
    (argument names and values; a configurable model's default settings whose
    names do not suggest a secret), hashed to keep traces short.
    """
    parts: list[str] = []
    current: Any = model
    while isinstance(current, RunnableBindingBase):
        parts.append(f"{type(current).__name__}:{sorted(current.kwargs.items())!r}")
        current = current.bound
    if isinstance(current, BaseChatModel):
        parts.append(llm_string(current))
    else:
        default = getattr(current, "_default_config", None) or {}
        safe = {
            k: v
            for k, v in default.items()
            if not any(word in k.lower() for word in ("key", "secret", "token", "password"))
        }
        parts.append(f"{type(current).__name__}:{sorted(safe.items())!r}")
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return f"{type(model).__name__}:{model_label(model)}:{digest}"
