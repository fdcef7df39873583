"""Every private upstream API the package relies on, in one place.

Each entry says why it is needed and what happens if an upstream release
removes it. ``tests/unit_tests/test_compat.py`` fails loudly when one is gone,
so an upgrade breaks a test, not a user.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.outputs import ChatGeneration

# ``get_usage_metadata_callback()`` and ``tracing_v2_enabled()`` attach their
# handlers through configure hooks keyed on context variables; the ensemble
# switches the non-tracer ones off for its inner calls. Without this list, the
# inner calls' usage would be counted twice by such handlers.
from langchain_core.tracers.context import _configure_hooks

# LangGraph wraps function nodes in ``RunnableCallable``: native sync and async
# bodies, and ``trace=False`` so a node has one traced run, not two. There is no
# public equivalent (a ``RunnableLambda`` adds a second, identically named run).
from langgraph._internal._runnable import RunnableCallable

__all__ = [
    "RunnableCallable",
    "configure_hook_variables",
    "convert_cached_generations",
    "llm_string",
    "ls_model_name",
    "ls_params",
    "openai_root_async_client",
]


def configure_hook_variables() -> Sequence[contextvars.ContextVar]:
    """The context variables through which LangChain attaches handlers on its own."""
    return [entry[0] for entry in _configure_hooks]


def llm_string(model: BaseChatModel) -> str:
    """The model's own LLM-cache key, computed by LangChain without secret values."""
    return model._get_llm_string()


def ls_model_name(model: BaseChatModel) -> str | None:
    """The model name LangChain reports to LangSmith, if any."""
    try:
        name = model._get_ls_params().get("ls_model_name")
    except Exception:
        return None
    return name if isinstance(name, str) else None


def ls_params(model: BaseChatModel) -> dict[str, Any]:
    """The model's LangSmith parameters (``ls_provider``, ``ls_model_name``, ...).

    LangChain computes them in the private ``_get_ls_params``; the price lookup
    reads the provider and the model name from them. Without them (an error or
    an upstream change) prices fall back to the model's base URL.
    """
    try:
        params = model._get_ls_params()
    except Exception:
        return {}
    return dict(params) if isinstance(params, dict) else {}


def convert_cached_generations(model: BaseChatModel, cached: list[Any]) -> list[ChatGeneration]:
    """Cached generations as chat generations, as LangChain's own cache lookup does."""
    return model._convert_cached_generations(cached)


def openai_root_async_client(model: BaseChatModel) -> Any:
    """The ``openai.AsyncOpenAI`` client of a ``langchain_openai`` model, or ``None``.

    ``langchain_openai`` keeps it in the (undocumented) ``root_async_client``
    field and derives ``async_client`` from it; the sync path gives each model a
    copy with an HTTP client of its own (see ``inner_models.background_copy``).
    Without it, such models run in worker threads on the sync path.
    """
    root = getattr(model, "root_async_client", None)
    return root if root is not None and hasattr(root, "with_options") else None
