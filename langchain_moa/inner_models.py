"""Names and identities of the chat models inside an ensemble."""

from __future__ import annotations

import hashlib

from langchain_core.language_models import BaseChatModel


def model_label(model: BaseChatModel) -> str:
    """Return a short human-readable name for ``model`` (e.g. ``gpt-4o-mini``).

    An explicit ``name=`` given to the model wins, then its model name.
    """
    if model.name:
        return model.name
    try:
        name = model._get_ls_params().get("ls_model_name")
    except Exception:
        name = None
    for candidate in (
        name,
        getattr(model, "model_name", None),
        getattr(model, "model", None),
    ):
        if isinstance(candidate, str) and candidate:
            return candidate
    return model._llm_type


def model_identity(model: BaseChatModel) -> str:
    """Return a stable identity of ``model``'s configuration, free of secrets.

    Built from the model's own cache key (``_get_llm_string``), which LangChain
    computes without secret values, and hashed to keep traces short.
    """
    digest = hashlib.sha256(model._get_llm_string().encode()).hexdigest()[:16]
    return f"{type(model).__name__}:{model_label(model)}:{digest}"
