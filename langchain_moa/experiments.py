"""Compare ensemble configurations side by side with ``langsmith.evaluate``.

``compare`` runs every configuration (any LangChain runnable: a chat model, an
``MoAChatModel``, a chain) on the same dataset with the same evaluators, one
LangSmith experiment per configuration, and collects per configuration the
mean score of every evaluator, the mean latency and the total tokens.

With LangSmith credentials (``LANGSMITH_API_KEY``) the experiments are uploaded
and can be compared in the LangSmith UI; the dataset is created there on first
use. Without them everything runs locally and nothing leaves the machine:

* ``evaluate`` gets the examples as a list of ``langsmith.schemas.Example``
  objects and ``upload_results=False``, so it creates no project and uploads
  no run or feedback;
* it still wants a ``langsmith.Client``; it gets :func:`offline_client`, whose
  HTTP session refuses (and counts) every request, so a stray call fails
  instead of reaching the network;
* in local mode ``evaluate`` still switches LangChain's tracer on for the
  target (``tracing_context(enabled="local")``), and that tracer posts the
  runnable's runs; the target therefore runs the configuration with tracing
  switched off.

Example:
    ```python
    from langchain_moa.experiments import compare

    result = compare(
        {"aggregator alone": aggregator, "MoA-Lite": moa_lite, "MoA": moa},
        [{"inputs": {"question": "Why is the sky blue?"}, "outputs": {"keyword": "sky"}}],
        [mentions_keyword],
    )
    Console().print(result.table())
    ```

Evaluators use ``langsmith``'s signatures, for instance ``def correct(inputs,
outputs, reference_outputs) -> bool``. ``outputs`` is ``{"answer": <text>,
"usage": <usage_metadata or {}>, "cost_usd": <dollars or None>}``; the cost is
the ensemble's ``response_metadata["cost"]["total_usd"]`` (``None`` for a model
or an ensemble with no known price).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import langsmith
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable
from langsmith import schemas
from langsmith.evaluation import evaluate
from langsmith.run_helpers import tracing_context

from langchain_moa._extras import missing_extra

try:
    import requests
    from rich import box
    from rich.table import Table
except ImportError as _missing:  # pragma: no cover - depends on the install
    raise missing_extra("experiments", _missing) from _missing

OFFLINE_API_URL = "http://127.0.0.1:9"
"""Where the offline client points (loopback; its session never connects)."""

_NAMESPACE = uuid.UUID("6f1c1d4e-1a39-4c55-9a53-2b6f6f2a6d11")
_API_KEY_VARIABLES = ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY")


# -- offline LangSmith ---------------------------------------------------------


class OfflineSession(requests.Session):
    """A ``requests`` session that refuses every request and remembers it.

    Attributes:
        attempts: ``(method, url)`` of every refused request.
    """

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[tuple[str, str]] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        """Refuse the request.

        Args:
            method: The HTTP method.
            url: The URL.
            *args: Ignored.
            **kwargs: Ignored.

        Raises:
            requests.ConnectionError: Always.
        """
        self.attempts.append((str(method), str(url)))
        msg = f"offline: refused {method!s} {url!s} (no LangSmith credentials)"
        raise requests.ConnectionError(msg)


def offline_client() -> langsmith.Client:
    """A LangSmith client that cannot reach any server.

    Returns:
        A client on a loopback URL whose session (an :class:`OfflineSession`)
        refuses every request; ``client.session.attempts`` lists them.
    """
    return langsmith.Client(
        api_url=OFFLINE_API_URL,
        api_key="offline",
        session=OfflineSession(),
        auto_batch_tracing=False,
        info=schemas.LangSmithInfo(),
    )


def has_langsmith_credentials() -> bool:
    """Whether a LangSmith API key is set in the environment.

    Returns:
        True if ``LANGSMITH_API_KEY`` (or ``LANGCHAIN_API_KEY``) is set.
    """
    return any(os.environ.get(name) for name in _API_KEY_VARIABLES)


# -- the dataset ---------------------------------------------------------------


def _check_dataset(dataset: Sequence[Mapping[str, Any]]) -> None:
    if not dataset:
        msg = "the dataset is empty"
        raise ValueError(msg)
    for index, item in enumerate(dataset):
        if not isinstance(item, Mapping) or not isinstance(item.get("inputs"), Mapping):
            msg = f"dataset item {index} must be a dict with an 'inputs' dict"
            raise ValueError(msg)


def _fingerprint(dataset: Sequence[Mapping[str, Any]]) -> str:
    """A short hash of the dataset's content."""
    canonical = json.dumps(
        [[item["inputs"], item.get("outputs")] for item in dataset], sort_keys=True, default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def local_examples(dataset: Sequence[Mapping[str, Any]]) -> list[schemas.Example]:
    """Turn dataset items into LangSmith examples that live only in memory.

    Ids are derived from the content, so the same dataset gives the same ids.

    Args:
        dataset: Items ``{"inputs": {...}, "outputs": {...}}`` (``outputs``
            optional).

    Returns:
        The examples.
    """
    fingerprint = _fingerprint(dataset)
    dataset_id = uuid.uuid5(_NAMESPACE, fingerprint)
    created = datetime.now(timezone.utc)
    return [
        schemas.Example(
            id=uuid.uuid5(dataset_id, str(index)),
            dataset_id=dataset_id,
            inputs=dict(item["inputs"]),
            outputs=dict(item.get("outputs") or {}),
            created_at=created,
        )
        for index, item in enumerate(dataset)
    ]


def upload_dataset(
    client: langsmith.Client, dataset: Sequence[Mapping[str, Any]], name: str
) -> str:
    """Create the dataset in LangSmith unless a dataset of that name exists.

    Args:
        client: A client with credentials.
        dataset: Items ``{"inputs": {...}, "outputs": {...}}``.
        name: The dataset name.

    Returns:
        The name, to pass to ``evaluate`` as ``data``.
    """
    if client.has_dataset(dataset_name=name):
        return name
    created = client.create_dataset(name, description="Created by langchain_moa.experiments")
    client.create_examples(
        dataset_id=created.id,
        examples=[
            {"inputs": dict(item["inputs"]), "outputs": dict(item.get("outputs") or {})}
            for item in dataset
        ],
    )
    return name


# -- the target ----------------------------------------------------------------


def _answer(result: Any) -> dict[str, Any]:
    """The target's outputs: the answer text, the token usage and the cost."""
    if isinstance(result, BaseMessage):
        usage = getattr(result, "usage_metadata", None) or {}
        cost = (result.response_metadata.get("cost") or {}).get("total_usd")
        return {"answer": result.text, "usage": dict(usage), "cost_usd": cost}
    return {"answer": str(result), "usage": {}, "cost_usd": None}


def make_target(
    runnable: Runnable[Any, Any], *, input_key: str | None = "question", trace: bool = True
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Wrap a configuration as an ``evaluate`` target.

    Args:
        runnable: The configuration.
        input_key: The input the runnable receives; ``None`` passes the whole
            ``inputs`` dict (for chains that take a dict).
        trace: Whether LangChain's tracer follows the runnable's runs; off
            for offline runs, where it would try to upload them.

    Returns:
        ``target(inputs) -> {"answer": str, "usage": dict}``.
    """

    def target(inputs: dict[str, Any]) -> dict[str, Any]:
        value = inputs if input_key is None else inputs[input_key]
        if trace:
            return _answer(runnable.invoke(value))
        with tracing_context(enabled=False):
            return _answer(runnable.invoke(value))

    return target


# -- the results ---------------------------------------------------------------


@dataclass(frozen=True)
class ExampleResult:
    """One configuration's result on one example.

    Attributes:
        inputs: The example's inputs.
        answer: The answer text (``None`` if the target failed).
        scores: Evaluator key to score.
        latency_s: Seconds the target took.
        total_tokens: Tokens of the call (all inner calls of an ensemble).
        error: The target's error, if it failed.
        cost_usd: Dollars of the call (``None``: a price was unknown).
    """

    inputs: Mapping[str, Any]
    answer: str | None
    scores: Mapping[str, float | None]
    latency_s: float | None
    total_tokens: int
    error: str | None
    cost_usd: float | None = None


@dataclass(frozen=True)
class ConfigurationRow:
    """The summary of one configuration over the dataset.

    Attributes:
        name: The configuration's name.
        experiment: The LangSmith experiment name.
        scores: Evaluator key to mean score (``None`` if no example was scored).
        mean_latency_s: Mean seconds per example.
        total_tokens: Tokens over every example.
        errors: Examples on which the target failed.
        examples: The per-example results.
        cost_usd: Dollars over every example (``None``: a price was unknown).
    """

    name: str
    experiment: str
    scores: Mapping[str, float | None]
    mean_latency_s: float | None
    total_tokens: int
    errors: int
    examples: tuple[ExampleResult, ...]
    cost_usd: float | None = None


@dataclass(frozen=True)
class ComparisonResult:
    """What ``compare`` measured.

    Attributes:
        rows: One row per configuration, in the order given.
        evaluator_keys: The feedback keys, in the order they appeared.
        uploaded: Whether the experiments went to LangSmith.
    """

    rows: list[ConfigurationRow]
    evaluator_keys: list[str] = field(default_factory=list)
    uploaded: bool = False

    def row(self, name: str) -> ConfigurationRow:
        """The row of one configuration.

        Args:
            name: The configuration's name.

        Returns:
            Its row.

        Raises:
            KeyError: If there is no such configuration.
        """
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def table(self) -> Table:
        """The comparison as a ``rich`` table.

        Returns:
            Configuration, mean score per evaluator, mean latency, total
            tokens and dollars over the dataset and failed examples.
        """
        where = "uploaded to LangSmith" if self.uploaded else "local, not uploaded"
        table = Table(
            title=f"Mixture-of-Agents configurations ({where})",
            caption="latency: mean seconds per example; tokens, cost: total over the dataset",
            box=box.SIMPLE_HEAD,
        )
        table.add_column("configuration", no_wrap=True)
        for key in self.evaluator_keys:
            table.add_column(key, justify="right", min_width=len(key))
        for column in ("latency", "tokens", "cost", "errors"):
            table.add_column(column, justify="right")
        for row in self.rows:
            scores = [_format_score(row.scores.get(key)) for key in self.evaluator_keys]
            latency = "-" if row.mean_latency_s is None else f"{row.mean_latency_s:.3f}"
            cost = "-" if row.cost_usd is None else f"${row.cost_usd:.4f}"
            table.add_row(row.name, *scores, latency, str(row.total_tokens), cost, str(row.errors))
        return table


def _format_score(score: float | None) -> str:
    return "-" if score is None else f"{score:.2f}"


def _score(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None


def _example_result(row: Mapping[str, Any]) -> ExampleResult:
    """Read one ``evaluate`` result row."""
    run = row["run"]
    outputs = run.outputs or {}
    latency = None
    if run.start_time and run.end_time:
        latency = (run.end_time - run.start_time).total_seconds()
    scores = {result.key: _score(result.score) for result in row["evaluation_results"]["results"]}
    return ExampleResult(
        inputs=row["example"].inputs,
        answer=outputs.get("answer"),
        scores=scores,
        latency_s=latency,
        total_tokens=int((outputs.get("usage") or {}).get("total_tokens", 0)),
        error=run.error,
        cost_usd=outputs.get("cost_usd"),
    )


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _total_cost(examples: Sequence[ExampleResult]) -> float | None:
    """Dollars over the examples that answered; ``None`` if one's cost is unknown."""
    answered = [e for e in examples if e.error is None]
    if not answered or any(e.cost_usd is None for e in answered):
        return None
    return sum(e.cost_usd for e in answered)  # type: ignore[misc]


def summarize(name: str, experiment: str, examples: Sequence[ExampleResult]) -> ConfigurationRow:
    """Summarize one configuration's per-example results.

    Args:
        name: The configuration's name.
        experiment: Its experiment name.
        examples: Its results.

    Returns:
        The row.
    """
    keys = list(dict.fromkeys(key for example in examples for key in example.scores))
    return ConfigurationRow(
        name=name,
        experiment=experiment,
        scores={key: _mean(e.scores.get(key) for e in examples) for key in keys},
        mean_latency_s=_mean(e.latency_s for e in examples),
        total_tokens=sum(e.total_tokens for e in examples),
        errors=sum(e.error is not None for e in examples),
        examples=tuple(examples),
        cost_usd=_total_cost(examples),
    )


# -- running the comparison ----------------------------------------------------


@dataclass(frozen=True)
class _Setup:
    client: langsmith.Client
    data: Any
    upload: bool


def _setup(
    dataset: Sequence[Mapping[str, Any]],
    *,
    upload: bool | None,
    client: langsmith.Client | None,
    dataset_name: str,
) -> _Setup:
    """Choose the client and the ``data`` argument of ``evaluate``."""
    upload = has_langsmith_credentials() if upload is None else upload
    if not upload:
        return _Setup(client or offline_client(), local_examples(dataset), upload=False)
    client = client or langsmith.Client()
    return _Setup(client, upload_dataset(client, dataset, dataset_name), upload=True)


def _run_configuration(
    name: str,
    runnable: Runnable[Any, Any],
    setup: _Setup,
    evaluators: Sequence[Callable[..., Any]],
    *,
    experiment_prefix: str,
    input_key: str | None,
    max_concurrency: int | None,
) -> ConfigurationRow:
    """Run one configuration as one experiment and summarize it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*parameter is in beta")
        results = evaluate(
            make_target(runnable, input_key=input_key, trace=setup.upload),
            data=setup.data,
            evaluators=list(evaluators),
            experiment_prefix=f"{experiment_prefix}-{name}",
            metadata={"configuration": name},
            max_concurrency=max_concurrency,
            client=setup.client,
            upload_results=setup.upload,
        )
    examples = [_example_result(row) for row in results]
    return summarize(name, results.experiment_name, examples)


def compare(
    configs: Mapping[str, Runnable[Any, Any]],
    dataset: Sequence[Mapping[str, Any]],
    evaluators: Sequence[Callable[..., Any]],
    *,
    upload: bool | None = None,
    experiment_prefix: str = "moa",
    input_key: str | None = "question",
    max_concurrency: int | None = 0,
    client: langsmith.Client | None = None,
    dataset_name: str | None = None,
) -> ComparisonResult:
    """Run each configuration on the dataset with ``langsmith.evaluate``.

    Args:
        configs: Configuration name to runnable (chat model, ensemble, chain).
        dataset: Items ``{"inputs": {...}, "outputs": {...}}``.
        evaluators: ``langsmith`` evaluators, e.g. ``def f(inputs, outputs,
            reference_outputs) -> bool | float | dict``. ``outputs`` is
            ``{"answer": str, "usage": dict, "cost_usd": float | None}``.
        upload: Upload the experiments to LangSmith; ``None``: if a LangSmith
            API key is set.
        experiment_prefix: Experiment names are ``<prefix>-<configuration>-<id>``.
        input_key: The input each runnable receives (``None``: the whole
            ``inputs`` dict).
        max_concurrency: Examples run at once per configuration (``0``: one
            after the other, which keeps latencies comparable).
        client: The LangSmith client (default: from the environment when
            uploading, :func:`offline_client` otherwise).
        dataset_name: The LangSmith dataset when uploading (default:
            ``<prefix>-<content hash>``, so a changed dataset gets a new one).

    Returns:
        The comparison, one row per configuration.

    Raises:
        ValueError: If there is no configuration or the dataset is malformed.
    """
    if not configs:
        msg = "give at least one configuration"
        raise ValueError(msg)
    _check_dataset(dataset)
    name = dataset_name or f"{experiment_prefix}-{_fingerprint(dataset)}"
    setup = _setup(dataset, upload=upload, client=client, dataset_name=name)
    rows = [
        _run_configuration(
            config_name,
            runnable,
            setup,
            evaluators,
            experiment_prefix=experiment_prefix,
            input_key=input_key,
            max_concurrency=max_concurrency,
        )
        for config_name, runnable in configs.items()
    ]
    keys = list(dict.fromkeys(key for row in rows for key in row.scores))
    return ComparisonResult(rows=rows, evaluator_keys=keys, uploaded=setup.upload)
