"""``moa serve --config FILE``: several named ensembles in a small TOML file.

Example::

    # moa-serve.toml: keys never go here, only the names of the variables
    [defaults]                      # optional; every ensemble inherits these
    base_url = "https://api.together.xyz/v1"
    api_key_env = "TOGETHER_API_KEY"
    temperature = 0.7
    max_tokens = 2048

    [ensembles.moa-lite]
    proposers = ["Qwen/Qwen1.5-72B-Chat", "meta-llama/Llama-3-70b-chat-hf"]
    aggregator = "Qwen/Qwen1.5-72B-Chat"
    layers = 2
    proposer_timeout = 60           # any MoAChatModel knob, see KNOBS

    [ensembles.mixed]
    proposers = ["Qwen/Qwen1.5-72B-Chat", "meta-llama/Llama-3-70b-chat-hf"]
    aggregator = "Qwen/Qwen1.5-110B-Chat"

    [ensembles.mixed.fallback_aggregator]   # a model on another endpoint
    model = "gpt-4o"
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"

A model is a name (it inherits ``base_url`` and ``api_key_env``) or a table
with ``model`` and, optionally, its own ``base_url`` and ``api_key_env``.
Without ``api_key_env`` the placeholder key ``EMPTY`` is sent (vLLM, Ollama).
A key written in the file (``api_key``) is refused.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from langchain_moa.lineups import LineUp, ModelSpec
from langchain_moa.presets import PAPER_MAX_TOKENS, PAPER_TEMPERATURE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

KNOBS = frozenset(
    {
        "min_proposers",
        "proposer_timeout",
        "layer_deadline",
        "aggregator_timeout",
        "aggregator_first_token_timeout",
        "max_retries",
        "retry_base_delay",
        "retry_max_delay",
        "max_concurrency",
        "max_reference_chars",
        "aggregation",
        "reference_format",
        "aggregator_prompt",
        "ranker_prompt",
    }
)
"""``MoAChatModel`` fields an ensemble of the file may set."""

_ENDPOINT = frozenset({"base_url", "api_key_env"})
_LINE_UP = frozenset({"proposers", "aggregator", "fallback_aggregator", "layers"})
_SAMPLING = frozenset({"temperature", "max_tokens"})
_ALLOWED = _ENDPOINT | _LINE_UP | _SAMPLING | KNOBS
_SECRET_KEYS = frozenset({"api_key", "key", "token", "openai_api_key", "password"})


class ConfigError(ValueError):
    """The configuration file cannot be used; the message says where and why."""


def _refuse_secrets(table: Mapping[str, Any], where: str) -> None:
    found = sorted(_SECRET_KEYS & set(table))
    if found:
        msg = (
            f"{where}: {found[0]} is not allowed here: keys come only from the environment; "
            "name the variable that holds the key with api_key_env"
        )
        raise ConfigError(msg)


def _model(value: Any, endpoint: Mapping[str, Any], where: str) -> ModelSpec:
    if isinstance(value, str) and value.strip():
        table: Mapping[str, Any] = {"model": value}
    elif isinstance(value, Mapping):
        table = value
        _refuse_secrets(table, where)
        unknown = sorted(set(table) - {"model"} - _ENDPOINT)
        if unknown:
            msg = f"{where}: unknown model setting {unknown[0]!r} (model, base_url, api_key_env)"
            raise ConfigError(msg)
    else:
        msg = f"{where}: a model is a name or a table with model = NAME"
        raise ConfigError(msg)
    name = table.get("model")
    if not isinstance(name, str) or not name.strip():
        msg = f"{where}: model must be a non-empty string"
        raise ConfigError(msg)
    settings = {**endpoint, **{k: table[k] for k in _ENDPOINT if k in table}}
    for key, setting in settings.items():
        if setting is not None and not isinstance(setting, str):
            msg = f"{where}: {key} must be a string"
            raise ConfigError(msg)
    key_env = settings.get("api_key_env") or None  # "" undoes an inherited variable
    return ModelSpec(name, settings.get("base_url"), key_env, key_required=key_env is not None)


def _ensemble(name: str, table: Any, defaults: Mapping[str, Any]) -> LineUp:
    where = f"ensembles.{name}"
    if not isinstance(table, Mapping):
        msg = f"{where} must be a table"
        raise ConfigError(msg)
    _refuse_secrets(table, where)
    merged = {**defaults, **table}
    unknown = sorted(set(merged) - _ALLOWED)
    if unknown:
        msg = f"{where}: unknown setting {unknown[0]!r}; allowed: {', '.join(sorted(_ALLOWED))}"
        raise ConfigError(msg)
    proposers = merged.get("proposers")
    if not isinstance(proposers, list) or not proposers:
        msg = f"{where}: proposers must be a non-empty list of models"
        raise ConfigError(msg)
    if "aggregator" not in merged:
        msg = f"{where}: aggregator is missing"
        raise ConfigError(msg)
    endpoint = {key: merged.get(key) for key in _ENDPOINT}
    fallback = merged.get("fallback_aggregator")
    return LineUp(
        name=name,
        proposers=tuple(
            _model(p, endpoint, f"{where}.proposers[{i}]") for i, p in enumerate(proposers)
        ),
        aggregator=_model(merged["aggregator"], endpoint, f"{where}.aggregator"),
        layers=merged.get("layers", 3),
        temperature=merged.get("temperature", PAPER_TEMPERATURE),
        max_tokens=merged.get("max_tokens", PAPER_MAX_TOKENS),
        options={key: merged[key] for key in KNOBS if key in merged},
        fallback=_model(fallback, endpoint, f"{where}.fallback_aggregator") if fallback else None,
        source=f"{where} of the configuration file",
    )


def load_config(path: str | Path) -> list[LineUp]:
    """Read the named ensembles of a TOML file.

    Args:
        path: The file.

    Returns:
        One line-up per ``[ensembles.NAME]`` table, in the file's order.

    Raises:
        ConfigError: The file cannot be read, is not TOML, holds a key, or an
            ensemble is incomplete or has an unknown setting.
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        msg = f"cannot read {path}: {error.strerror or error}"
        raise ConfigError(msg) from None
    except tomllib.TOMLDecodeError as error:
        msg = f"{path} is not valid TOML: {error}"
        raise ConfigError(msg) from None
    unknown = sorted(set(data) - {"defaults", "ensembles"})
    if unknown:
        msg = f"{path}: unknown table {unknown[0]!r} (defaults, ensembles)"
        raise ConfigError(msg)
    defaults = data.get("defaults", {})
    if not isinstance(defaults, Mapping):
        msg = f"{path}: defaults must be a table"
        raise ConfigError(msg)
    _refuse_secrets(defaults, "defaults")
    ensembles = data.get("ensembles")
    if not isinstance(ensembles, Mapping) or not ensembles:
        msg = f"{path}: no [ensembles.NAME] table"
        raise ConfigError(msg)
    return [_ensemble(str(name), table, defaults) for name, table in ensembles.items()]
