"""Ready-made ensembles: the paper's line-ups and any OpenAI-compatible endpoint.

Keys and base URLs come from arguments or the usual environment variables and
are handed to ``ChatOpenAI`` as secrets; nothing here prints or logs them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from langchain_moa.chat_model import MoAChatModel

TOGETHER_BASE_URL = "https://api.together.xyz/v1"
"""Together's OpenAI-compatible endpoint."""

PAPER_PROPOSERS = (
    "Qwen/Qwen1.5-110B-Chat",
    "Qwen/Qwen1.5-72B-Chat",
    "microsoft/WizardLM-2-8x22B",
    "meta-llama/Llama-3-70b-chat-hf",
    "mistralai/Mixtral-8x22B-Instruct-v0.1",
    "databricks/dbrx-instruct",
)
"""The six open proposers of the paper's published runs (Together model ids)."""

MOA_AGGREGATOR = "Qwen/Qwen1.5-110B-Chat"
"""Aggregator of the paper's MoA (3 layers): 65.1% AlpacaEval 2.0 LC win rate."""

MOA_LITE_AGGREGATOR = "Qwen/Qwen1.5-72B-Chat"
"""Aggregator of the paper's MoA-Lite (2 layers): 59.3% LC win rate."""

OPENAI_PROPOSERS = ("gpt-4o-mini", "gpt-4.1-mini", "gpt-4.1-nano")
"""Proposers of the OpenAI line-up."""

OPENAI_AGGREGATOR = "gpt-4o"
"""Aggregator of the OpenAI line-up."""

PAPER_TEMPERATURE = 0.7
PAPER_MAX_TOKENS = 2048


def openai_chat_model(
    model: str,
    *,
    base_url: str | None,
    api_key: str,
    temperature: float = PAPER_TEMPERATURE,
    max_tokens: int = PAPER_MAX_TOKENS,
    **model_kwargs: Any,
) -> ChatOpenAI:
    """One inner model on an OpenAI-compatible endpoint, as the presets build them.

    Args:
        model: The model name.
        base_url: The endpoint (``None``: OpenAI's).
        api_key: The key, handed to ``ChatOpenAI`` as a secret.
        temperature: Sampling temperature.
        max_tokens: Token limit.
        **model_kwargs: Further ``ChatOpenAI`` arguments; ``max_retries`` is 0
            unless given (the ensemble retries transient failures itself).

    Returns:
        The chat model, reporting usage when it streams.
    """
    return ChatOpenAI(
        model=model,
        base_url=base_url,
        api_key=SecretStr(api_key),
        temperature=temperature,
        max_tokens=max_tokens,  # type: ignore[call-arg]
        stream_usage=True,
        **{"max_retries": 0, **model_kwargs},
    )


def openai_compatible_moa(
    proposers: Sequence[str],
    aggregator: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    layers: int = 3,
    temperature: float = PAPER_TEMPERATURE,
    max_tokens: int = PAPER_MAX_TOKENS,
    **model_kwargs: Any,
) -> MoAChatModel:
    """Build an ensemble of models served by one OpenAI-compatible endpoint.

    Works with OpenAI, Together, vLLM, Ollama (``http://localhost:11434/v1``) and
    the bundled simulator.

    Args:
        proposers: Model names of the proposers (reused in every proposer layer).
        aggregator: Model name of the aggregator.
        base_url: The endpoint; defaults to ``OPENAI_BASE_URL`` or OpenAI.
        api_key: The key; defaults to ``OPENAI_API_KEY`` (``"EMPTY"`` for a
            local server that needs none).
        layers: All layers, the aggregator's included.
        temperature: Sampling temperature of every call (paper: 0.7).
        max_tokens: Token limit of every call (paper: 2048).
        **model_kwargs: Further ``ChatOpenAI`` arguments (``timeout``, ...). The
            inner models get ``max_retries=0`` unless given here: the ensemble
            retries transient failures itself (``MoAChatModel.max_retries``).

    Returns:
        The ensemble.
    """
    base_url = base_url or os.environ.get("OPENAI_BASE_URL")
    key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"

    def chat(model: str) -> ChatOpenAI:
        return openai_chat_model(
            model,
            base_url=base_url,
            api_key=key,
            temperature=temperature,
            max_tokens=max_tokens,
            **model_kwargs,
        )

    return MoAChatModel(
        proposers=[chat(name) for name in proposers],
        aggregator=chat(aggregator),
        layers=layers,
    )


def _together(aggregator: str, layers: int, api_key: str | None, kwargs: Any) -> MoAChatModel:
    key = api_key or os.environ.get("TOGETHER_API_KEY")
    if not key:
        msg = "no Together API key: pass api_key= or set TOGETHER_API_KEY"
        raise ValueError(msg)
    params: dict[str, Any] = {"base_url": TOGETHER_BASE_URL, "layers": layers, **kwargs}
    return openai_compatible_moa(PAPER_PROPOSERS, aggregator, api_key=key, **params)


def together_moa(api_key: str | None = None, **kwargs: Any) -> MoAChatModel:
    """The paper's MoA: six open proposers, 3 layers, Qwen1.5-110B-Chat aggregating.

    Args:
        api_key: Together API key; defaults to ``TOGETHER_API_KEY``.
        **kwargs: Overrides for ``openai_compatible_moa`` (``base_url``, ...).
    """
    return _together(MOA_AGGREGATOR, 3, api_key, kwargs)


def together_moa_lite(api_key: str | None = None, **kwargs: Any) -> MoAChatModel:
    """The paper's MoA-Lite: six open proposers, 2 layers, Qwen1.5-72B-Chat aggregating.

    Args:
        api_key: Together API key; defaults to ``TOGETHER_API_KEY``.
        **kwargs: Overrides for ``openai_compatible_moa`` (``base_url``, ...).
    """
    return _together(MOA_LITE_AGGREGATOR, 2, api_key, kwargs)


def openai_moa(api_key: str | None = None, **kwargs: Any) -> MoAChatModel:
    """An OpenAI line-up: three small models proposing, gpt-4o aggregating.

    Args:
        api_key: OpenAI API key; defaults to ``OPENAI_API_KEY``.
        **kwargs: Overrides for ``openai_compatible_moa`` (``layers``, ...).
    """
    key = api_key or os.environ.get("OPENAI_API_KEY")
    if not key:
        msg = "no OpenAI API key: pass api_key= or set OPENAI_API_KEY"
        raise ValueError(msg)
    return openai_compatible_moa(OPENAI_PROPOSERS, OPENAI_AGGREGATOR, api_key=key, **kwargs)


def self_moa(
    model: BaseChatModel,
    samples: int = 6,
    *,
    layers: int = 2,
    temperature: float = PAPER_TEMPERATURE,
    aggregator: BaseChatModel | None = None,
    **kwargs: Any,
) -> MoAChatModel:
    """Self-MoA (Li et al., 2025): one strong model sampled ``samples`` times.

    The same model proposes ``samples`` times per layer at ``temperature`` > 0
    (so the samples differ) and, unless another is given, also aggregates.

    Args:
        model: The model to sample.
        samples: Proposals per layer.
        layers: All layers, the aggregator's included.
        temperature: Sampling temperature of every call; must be > 0.
        aggregator: Another aggregator, if wanted.
        **kwargs: Further ``MoAChatModel`` fields.

    Returns:
        The ensemble.
    """
    if temperature <= 0:
        msg = f"Self-MoA needs temperature > 0 so that the samples differ, got {temperature}"
        raise ValueError(msg)
    return MoAChatModel(
        proposers=[model] * samples,
        aggregator=aggregator or model,
        layers=layers,
        temperature=temperature,
        **kwargs,
    )
