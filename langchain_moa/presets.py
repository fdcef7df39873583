"""Ready-made ensembles: the published line-ups, by name, and any OpenAI-compatible endpoint.

:data:`REGISTRY` is the one list of published line-ups: a name
(``together-moa``, ``together-moa-lite``, ``openai``) to a
:class:`LineUpPreset`, which builds the ensemble (:meth:`LineUpPreset.build`)
or describes it as a :class:`~langchain_moa.lineups.LineUp`
(:meth:`LineUpPreset.lineup`), with overrides. Every command chooses its
published line-ups here: ``moa`` (by the key that is set),
``moa-generate --preset``, ``moa serve --preset`` and the LangGraph
deployment's ``MOA_PRESET``. :func:`together_moa`, :func:`together_moa_lite`
and :func:`openai_moa` are thin wrappers around it.

Keys and base URLs come from arguments or the usual environment variables and
are handed to ``ChatOpenAI`` as secrets; nothing here prints or logs them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_openai import ChatOpenAI

from langchain_moa.chat_model import MoAChatModel
from langchain_moa.lineups import (
    PAPER_MAX_TOKENS,
    PAPER_TEMPERATURE,
    LineUp,
    openai_chat_model,
    same_endpoint,
)

__all__ = [
    "MOA_AGGREGATOR",
    "MOA_LITE_AGGREGATOR",
    "OPENAI_AGGREGATOR",
    "OPENAI_PROPOSERS",
    "PAPER_MAX_TOKENS",
    "PAPER_PROPOSERS",
    "PAPER_TEMPERATURE",
    "PRESETS",
    "REGISTRY",
    "TOGETHER_BASE_URL",
    "LineUpPreset",
    "openai_chat_model",
    "openai_compatible_moa",
    "openai_moa",
    "paper_preset",
    "preset",
    "preset_lineup",
    "self_moa",
    "together_moa",
    "together_moa_lite",
]

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


@dataclass(frozen=True)
class LineUpPreset:
    """A published line-up: its models, its layers, and the provider that serves them.

    Attributes:
        name: The registry key and ``--preset`` value (``"together-moa"``).
        proposers: Proposer model names (reused in every proposer layer).
        aggregator: Aggregator model name.
        layers: All layers, the aggregator's included.
        provider: Who serves the models, in words (``"Together"``).
        base_url: The provider's OpenAI-compatible endpoint (``None``: OpenAI's,
            or ``OPENAI_BASE_URL`` when the factory builds it).
        api_key_env: The environment variable that holds the provider's key.
        generator_name: The generator name ``moa-generate`` labels answers with.
    """

    name: str
    proposers: tuple[str, ...]
    aggregator: str
    layers: int
    provider: str
    base_url: str | None
    api_key_env: str
    generator_name: str

    def api_key(self, api_key: str | None = None) -> str:
        """The key: ``api_key``, else the provider's variable, read now.

        Raises:
            ValueError: Neither is given (the message names the variable,
                never a value).
        """
        key = api_key or os.environ.get(self.api_key_env)
        if not key:
            msg = f"no {self.provider} API key: pass api_key= or set {self.api_key_env}"
            raise ValueError(msg)
        return key

    def build(self, api_key: str | None = None, **overrides: Any) -> MoAChatModel:
        """Build the ensemble on the provider.

        Args:
            api_key: The provider's key; defaults to :attr:`api_key_env`.
            **overrides: Overrides for :func:`openai_compatible_moa`
                (``layers``, ``base_url``, ``temperature``, ``max_tokens``,
                ``timeout``, ...).

        Returns:
            The ensemble.

        Raises:
            ValueError: No key.
        """
        key = self.api_key(api_key)
        params: dict[str, Any] = {"base_url": self.base_url, "layers": self.layers, **overrides}
        return openai_compatible_moa(self.proposers, self.aggregator, api_key=key, **params)

    def lineup(
        self,
        *,
        name: str | None = None,
        proposers: Sequence[str] | None = None,
        aggregator: str | None = None,
        layers: int | None = None,
        temperature: float = PAPER_TEMPERATURE,
        max_tokens: int = PAPER_MAX_TOKENS,
        source: str | None = None,
    ) -> LineUp:
        """Describe the line-up on its provider, keys left in the environment.

        Args:
            name: The line-up's name (default: the preset's).
            proposers: Other proposer model names (default: the preset's).
            aggregator: Another aggregator model name (default: the preset's).
            layers: All layers (default: the preset's).
            temperature: Sampling temperature of every call.
            max_tokens: Token limit of every call.
            source: Where the answers come from, in words (default: "the NAME
                line-up on PROVIDER").

        Returns:
            The line-up; building it needs :attr:`api_key_env` to be set.
        """
        return same_endpoint(
            name or self.name,
            tuple(proposers or self.proposers),
            aggregator or self.aggregator,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            key_required=True,
            layers=layers or self.layers,
            temperature=temperature,
            max_tokens=max_tokens,
            source=source or f"the {self.name} line-up on {self.provider}",
        )


def _registry(*presets: LineUpPreset) -> dict[str, LineUpPreset]:
    return {entry.name: entry for entry in presets}


REGISTRY: dict[str, LineUpPreset] = _registry(
    LineUpPreset(
        "together-moa",
        PAPER_PROPOSERS,
        MOA_AGGREGATOR,
        3,
        provider="Together",
        base_url=TOGETHER_BASE_URL,
        api_key_env="TOGETHER_API_KEY",
        generator_name="together-moa",
    ),
    LineUpPreset(
        "together-moa-lite",
        PAPER_PROPOSERS,
        MOA_LITE_AGGREGATOR,
        2,
        provider="Together",
        base_url=TOGETHER_BASE_URL,
        api_key_env="TOGETHER_API_KEY",
        generator_name="together-moa-lite",
    ),
    LineUpPreset(
        "openai",
        OPENAI_PROPOSERS,
        OPENAI_AGGREGATOR,
        3,
        provider="OpenAI",
        base_url=None,
        api_key_env="OPENAI_API_KEY",
        generator_name="openai-moa",
    ),
)
"""The published line-ups by name: the one place every command chooses them from."""

PRESETS = tuple(REGISTRY)
"""The names of :data:`REGISTRY`, in its order."""


def preset(name: str) -> LineUpPreset:
    """The published line-up called ``name``.

    Raises:
        ValueError: An unknown name (the message lists the known ones).
    """
    try:
        return REGISTRY[name]
    except KeyError:
        msg = f"unknown preset {name!r}; choose one of {', '.join(REGISTRY)}"
        raise ValueError(msg) from None


def paper_preset(layers: int) -> LineUpPreset:
    """The paper's line-up for ``layers``: MoA-Lite for 2, else MoA."""
    return REGISTRY["together-moa-lite" if layers == 2 else "together-moa"]


def preset_lineup(
    name: str,
    *,
    layers: int | None = None,
    temperature: float = PAPER_TEMPERATURE,
    max_tokens: int = PAPER_MAX_TOKENS,
) -> LineUp:
    """A published line-up as a :class:`~langchain_moa.lineups.LineUp`, named after it.

    Args:
        name: One of :data:`PRESETS`.
        layers: All layers (default: the preset's).
        temperature: Sampling temperature of every call.
        max_tokens: Token limit of every call.

    Returns:
        The line-up; its keys come from ``TOGETHER_API_KEY`` / ``OPENAI_API_KEY``.

    Raises:
        ValueError: An unknown preset.
    """
    return preset(name).lineup(layers=layers, temperature=temperature, max_tokens=max_tokens)


def together_moa(api_key: str | None = None, **kwargs: Any) -> MoAChatModel:
    """The paper's MoA: six open proposers, 3 layers, Qwen1.5-110B-Chat aggregating.

    Args:
        api_key: Together API key; defaults to ``TOGETHER_API_KEY``.
        **kwargs: Overrides for ``openai_compatible_moa`` (``base_url``, ...).
    """
    return REGISTRY["together-moa"].build(api_key, **kwargs)


def together_moa_lite(api_key: str | None = None, **kwargs: Any) -> MoAChatModel:
    """The paper's MoA-Lite: six open proposers, 2 layers, Qwen1.5-72B-Chat aggregating.

    Args:
        api_key: Together API key; defaults to ``TOGETHER_API_KEY``.
        **kwargs: Overrides for ``openai_compatible_moa`` (``base_url``, ...).
    """
    return REGISTRY["together-moa-lite"].build(api_key, **kwargs)


def openai_moa(api_key: str | None = None, **kwargs: Any) -> MoAChatModel:
    """An OpenAI line-up: three small models proposing, gpt-4o aggregating.

    Args:
        api_key: OpenAI API key; defaults to ``OPENAI_API_KEY``.
        **kwargs: Overrides for ``openai_compatible_moa`` (``layers``, ...).
    """
    return REGISTRY["openai"].build(api_key, **kwargs)


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
