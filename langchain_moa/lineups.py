"""Line-ups: an ensemble described by model names, endpoints and settings, no keys.

A :class:`LineUp` names its models, their OpenAI-compatible endpoints and the
*environment variables* that hold their keys, never a key itself. So it can be
printed, written to a file and handed to another process (``moa serve
--workers N`` sends it to every worker), and each process reads the keys from
its own environment when it builds the ensemble with :meth:`LineUp.build`.

The published line-ups, by name, are the registry of :mod:`langchain_moa.presets`
(``presets.REGISTRY``); ``PRESETS`` and ``preset_lineup`` are still importable
from here and come from there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from langchain_moa.chat_model import MoAChatModel

PLACEHOLDER_KEY = "EMPTY"
"""The key sent to a server that needs none (vLLM, Ollama, the simulator)."""

PAPER_TEMPERATURE = 0.7
"""The paper's sampling temperature, every line-up's default."""

PAPER_MAX_TOKENS = 2048
"""The paper's token limit per call, every line-up's default."""


def openai_chat_model(
    model: str,
    *,
    base_url: str | None,
    api_key: str,
    temperature: float = PAPER_TEMPERATURE,
    max_tokens: int = PAPER_MAX_TOKENS,
    **model_kwargs: Any,
) -> ChatOpenAI:
    """One inner model on an OpenAI-compatible endpoint, as line-ups and presets build them.

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

    def on_simulator(self, base_url: str, *, source: str) -> LineUp:
        """The same line-up with every model answered by the simulator at ``base_url``.

        Args:
            base_url: The simulator's OpenAI base URL.
            source: Where the answers come from, in words.

        Returns:
            The line-up, ``simulated``, its models needing no key.
        """

        def simulated(spec: ModelSpec) -> ModelSpec:
            return ModelSpec(spec.model, base_url)

        return replace(
            self,
            proposers=tuple(simulated(spec) for spec in self.proposers),
            aggregator=simulated(self.aggregator),
            fallback=simulated(self.fallback) if self.fallback else None,
            source=source,
            simulated=True,
        )

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


_FROM_PRESETS = frozenset({"PRESETS", "preset_lineup"})


def __getattr__(name: str) -> Any:
    """``PRESETS`` and ``preset_lineup``, which live in :mod:`langchain_moa.presets`.

    Looked up there on first use: the presets build on this module.

    Args:
        name: The attribute name.

    Returns:
        The attribute.

    Raises:
        AttributeError: Any other name.
    """
    if name in _FROM_PRESETS:
        from langchain_moa import presets

        return getattr(presets, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
