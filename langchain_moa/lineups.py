"""Line-ups: an ensemble described by model names, endpoints and settings, no keys.

A :class:`LineUp` names its models, their OpenAI-compatible endpoints and the
*environment variables* that hold their keys, never a key itself. So it can be
printed, written to a file and handed to another process (``moa serve
--workers N`` sends it to every worker), and each process reads the keys from
its own environment when it builds the ensemble with :meth:`LineUp.build`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from langchain_openai import ChatOpenAI

from langchain_moa.chat_model import MoAChatModel
from langchain_moa.presets import (
    MOA_AGGREGATOR,
    MOA_LITE_AGGREGATOR,
    OPENAI_AGGREGATOR,
    OPENAI_PROPOSERS,
    PAPER_MAX_TOKENS,
    PAPER_PROPOSERS,
    PAPER_TEMPERATURE,
    TOGETHER_BASE_URL,
    openai_chat_model,
)

PLACEHOLDER_KEY = "EMPTY"
"""The key sent to a server that needs none (vLLM, Ollama, the simulator)."""


@dataclass(frozen=True)
class ModelSpec:
    """One inner model: its name, endpoint and where its key comes from.

    Attributes:
        model: The model name the endpoint knows.
        base_url: The OpenAI-compatible endpoint (``None``: OpenAI's).
        api_key_env: The environment variable that holds the key; ``None`` (or
            an unset optional variable): the placeholder key ``"EMPTY"``.
        key_required: Refuse to build when ``api_key_env`` is unset.
    """

    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    key_required: bool = False

    def api_key(self) -> str:
        """The key, read from the environment now.

        Raises:
            ValueError: The variable is required and unset (the message names
                the variable, never a value).
        """
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            return key
        if self.key_required:
            msg = f"{self.api_key_env} is not set: {self.model} needs a key from it"
            raise ValueError(msg)
        return PLACEHOLDER_KEY

    def build(self, temperature: float, max_tokens: int) -> ChatOpenAI:
        """The ``ChatOpenAI`` for this model (no inner retries, usage when streaming)."""
        return openai_chat_model(
            self.model,
            base_url=self.base_url,
            api_key=self.api_key(),
            temperature=temperature,
            max_tokens=max_tokens,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "model": self.model,
            "base_url": self.base_url,
            "api_key_env": self.api_key_env,
            "key_required": self.key_required,
        }


@dataclass(frozen=True)
class LineUp:
    """An ensemble by names: models, endpoints, layers and settings.

    Attributes:
        name: The name it is served under.
        proposers: The proposers (reused in every proposer layer).
        aggregator: The aggregator.
        layers: All layers, the aggregator's included.
        temperature: Sampling temperature of every inner call.
        max_tokens: Token limit of every inner call.
        options: Further ``MoAChatModel`` fields (``proposer_timeout``,
            ``layer_deadline``, ``min_proposers``, ``max_concurrency`` ...).
        fallback: The fallback aggregator, if any.
        source: Where the answers come from, in words (no secrets).
        simulated: Whether the models are the bundled simulator's.
    """

    name: str
    proposers: tuple[ModelSpec, ...]
    aggregator: ModelSpec
    layers: int = 3
    temperature: float = PAPER_TEMPERATURE
    max_tokens: int = PAPER_MAX_TOKENS
    options: Mapping[str, Any] = field(default_factory=dict)
    fallback: ModelSpec | None = None
    source: str = ""
    simulated: bool = False

    def build(self) -> MoAChatModel:
        """Build the ensemble, reading every key from the environment now.

        Raises:
            ValueError: A required key is unset, or the ensemble refuses a
                setting (a pydantic ``ValidationError`` names it).
        """
        settings = (self.temperature, self.max_tokens)
        options = dict(self.options)
        if self.fallback is not None:
            options["fallback_aggregator"] = self.fallback.build(*settings)
        return MoAChatModel(
            proposers=[spec.build(*settings) for spec in self.proposers],
            aggregator=self.aggregator.build(*settings),
            layers=self.layers,
            **options,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (names only: keys stay in the environment)."""
        return {
            "name": self.name,
            "proposers": [spec.to_dict() for spec in self.proposers],
            "aggregator": self.aggregator.to_dict(),
            "layers": self.layers,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "options": dict(self.options),
            "fallback": self.fallback.to_dict() if self.fallback else None,
            "source": self.source,
            "simulated": self.simulated,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LineUp:
        """The inverse of :meth:`to_dict`."""
        return cls(
            name=data["name"],
            proposers=tuple(ModelSpec(**spec) for spec in data["proposers"]),
            aggregator=ModelSpec(**data["aggregator"]),
            layers=data["layers"],
            temperature=data["temperature"],
            max_tokens=data["max_tokens"],
            options=dict(data.get("options") or {}),
            fallback=ModelSpec(**data["fallback"]) if data.get("fallback") else None,
            source=data.get("source", ""),
            simulated=data.get("simulated", False),
        )


def same_endpoint(
    name: str,
    proposers: tuple[str, ...] | list[str],
    aggregator: str,
    *,
    base_url: str | None,
    api_key_env: str | None,
    key_required: bool = False,
    **fields: Any,
) -> LineUp:
    """A line-up whose models all live on one endpoint.

    Args:
        name: The line-up's name.
        proposers: Proposer model names.
        aggregator: Aggregator model name.
        base_url: The endpoint.
        api_key_env: The variable that holds its key.
        key_required: Refuse to build without that key.
        **fields: Further :class:`LineUp` fields (``layers``, ``source`` ...).

    Returns:
        The line-up.
    """

    def spec(model: str) -> ModelSpec:
        return ModelSpec(model, base_url, api_key_env, key_required)

    return LineUp(name, tuple(spec(m) for m in proposers), spec(aggregator), **fields)


PRESETS = ("together-moa", "together-moa-lite", "openai")
"""The published line-ups of :mod:`langchain_moa.presets`, by name."""


def preset_lineup(
    preset: str,
    *,
    layers: int | None = None,
    temperature: float = PAPER_TEMPERATURE,
    max_tokens: int = PAPER_MAX_TOKENS,
) -> LineUp:
    """A published line-up: ``together-moa``, ``together-moa-lite`` or ``openai``.

    Args:
        preset: One of :data:`PRESETS`.
        layers: All layers (default: the preset's).
        temperature: Sampling temperature of every call.
        max_tokens: Token limit of every call.

    Returns:
        The line-up; its keys come from ``TOGETHER_API_KEY`` / ``OPENAI_API_KEY``.

    Raises:
        ValueError: An unknown preset.
    """
    settings = {"temperature": temperature, "max_tokens": max_tokens}
    if preset in ("together-moa", "together-moa-lite"):
        lite = preset == "together-moa-lite"
        return same_endpoint(
            preset,
            PAPER_PROPOSERS,
            MOA_LITE_AGGREGATOR if lite else MOA_AGGREGATOR,
            base_url=TOGETHER_BASE_URL,
            api_key_env="TOGETHER_API_KEY",
            key_required=True,
            layers=layers or (2 if lite else 3),
            source=f"the {preset} line-up on Together",
            **settings,
        )
    if preset == "openai":
        return same_endpoint(
            preset,
            OPENAI_PROPOSERS,
            OPENAI_AGGREGATOR,
            base_url=None,
            api_key_env="OPENAI_API_KEY",
            key_required=True,
            layers=layers or 3,
            source="the openai line-up on OpenAI",
            **settings,
        )
    msg = f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}"
    raise ValueError(msg)
