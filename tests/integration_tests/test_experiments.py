"""The offline experiments example, end to end against the simulator.

``langsmith.evaluate`` runs locally: the examples are in-memory
``langsmith.schemas.Example`` objects, uploads are off, and the LangSmith
client's session refuses every request, so any attempt to reach LangSmith is
counted (and pytest-socket allows loopback only).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from langchain_core.runnables import RunnableLambda
from rich.console import Console

from langchain_moa.experiments import ComparisonResult, compare, offline_client, upload_dataset
from langchain_moa.testing import ModelBehavior, OpenAISimulator
from langchain_moa.testing.answers import simulate

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "experiments.py"
CONFIGURATIONS = ["aggregator alone", "MoA-Lite", "MoA", "Self-MoA"]


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("moa_experiments_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LangSmith credentials; tracing switched on to prove nothing is sent."""
    for name in ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGSMITH_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANGSMITH_TRACING", "true")


def render(result: ComparisonResult) -> str:
    console = Console(file=StringIO(), width=120)
    console.print(result.table())
    return console.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.usefixtures("offline")
def test_offline_example_compares_the_configurations() -> None:
    example = load_example()
    client = offline_client()
    with OpenAISimulator() as sim:
        result = example.run(example.simulated(sim), client=client)
        requests = sim.requests

    assert client.session.attempts == []  # nothing went to LangSmith
    assert not result.uploaded
    assert [row.name for row in result.rows] == CONFIGURATIONS
    assert result.evaluator_keys == ["answered", "keyword", "references"]
    references = {"aggregator alone": 0, "MoA-Lite": 3, "MoA": 3, "Self-MoA": 3}
    calls_in_a_row = {"aggregator alone": 1, "MoA-Lite": 2, "MoA": 3, "Self-MoA": 2}
    calls_per_example = {"aggregator alone": 1, "MoA-Lite": 4, "MoA": 7, "Self-MoA": 4}
    for row in result.rows:
        assert row.errors == 0
        assert len(row.examples) == len(example.DATASET)
        assert row.scores["answered"] == 1.0
        assert row.scores["keyword"] == 1.0
        assert row.scores["references"] == references[row.name]
        # Every call waits the example's 0.02 s first-token latency; the calls of
        # one example run in `calls_in_a_row[name]` rounds.
        for e in row.examples:
            assert e.latency_s is not None
            assert 0.02 * calls_in_a_row[row.name] <= e.latency_s < 30
        assert row.mean_latency_s == pytest.approx(
            sum(e.latency_s for e in row.examples) / len(row.examples)  # type: ignore[misc]
        )
        assert row.total_tokens == sum(e.total_tokens for e in row.examples)
    # The token figures are the simulator's own accounting of every request each
    # configuration sent (the configurations ran one after the other, in order).
    tokens = {row.name: row.total_tokens for row in result.rows}
    sent = iter(requests)
    for name in CONFIGURATIONS:
        calls = [next(sent) for _ in range(len(example.DATASET) * calls_per_example[name])]
        assert tokens[name] == sum(simulate(r.body).usage["total_tokens"] for r in calls), name
    assert tokens["aggregator alone"] < tokens["MoA-Lite"] < tokens["MoA"]
    latency = {row.name: row.mean_latency_s for row in result.rows}
    assert latency["aggregator alone"] < latency["MoA"]  # one call vs three in a row
    # The answers are the simulator's: each configuration's final model answered.
    moa = result.row("MoA").examples[0]
    assert moa.answer == (
        "aggregator read 3 references [proposer-a, proposer-b, proposer-c] and answers: "
        "Why is the sky blue?"
    )
    self_moa = result.row("Self-MoA").examples[0].answer
    assert self_moa is not None
    assert self_moa.startswith("strong-model read 3 references [strong-model, strong-model")
    # Every configuration ran every example once: 5 x (1 + 4 + 7 + 4) calls.
    assert len(requests) == 5 * sum(calls_per_example.values()) == 5 * 16

    table = render(result)
    assert "local, not uploaded" in table
    for name in CONFIGURATIONS:
        assert name in table
    for figure in (str(tokens["MoA"]), "3.00", "1.00", f"{latency['MoA']:.3f}"):
        assert figure in table


@pytest.mark.usefixtures("offline")
def test_tokens_are_input_plus_output_and_latency_includes_the_models_delay() -> None:
    # The simulator counts whitespace-separated words: a question's words in,
    # "<model> answers: <question>" out.
    dataset = [
        {"inputs": {"question": "Why is the sky blue?"}},  # 5 in, 2 + 5 out
        {"inputs": {"question": "What causes the seasons?"}},  # 4 in, 2 + 4 out
    ]
    client = offline_client()
    with OpenAISimulator(behaviors={"xp-tok": ModelBehavior(first_token_latency=0.2)}) as sim:
        result = compare({"one model": sim.chat_model("xp-tok")}, dataset, [], client=client)

    (row,) = result.rows
    assert [e.answer for e in row.examples] == [
        "xp-tok answers: Why is the sky blue?",
        "xp-tok answers: What causes the seasons?",
    ]
    assert [e.total_tokens for e in row.examples] == [5 + 7, 4 + 6]
    assert row.total_tokens == 22
    for e in row.examples:
        assert e.latency_s is not None
        assert 0.2 <= e.latency_s < 30
    assert row.mean_latency_s == pytest.approx(sum(e.latency_s for e in row.examples) / 2)
    (line,) = [line for line in render(result).splitlines() if "one model" in line]
    assert line.split()[-3:] == ["22", "-", "0"]  # tokens, cost (no price), errors
    assert client.session.attempts == []


@pytest.mark.usefixtures("offline")
def test_failures_and_custom_inputs_are_reported() -> None:
    def shout(inputs: dict[str, str]) -> str:
        if inputs["text"] == "boom":
            msg = "no answer"
            raise RuntimeError(msg)
        return inputs["text"].upper()

    def exact(outputs: dict[str, str], reference_outputs: dict[str, str]) -> bool:
        return outputs["answer"] == reference_outputs["answer"]

    dataset = [
        {"inputs": {"text": "hi"}, "outputs": {"answer": "HI"}},
        {"inputs": {"text": "yo"}, "outputs": {"answer": "nope"}},
        {"inputs": {"text": "boom"}, "outputs": {"answer": "BOOM"}},
    ]
    client = offline_client()
    result = compare(
        {"shout": RunnableLambda(shout)}, dataset, [exact], input_key=None, client=client
    )

    (row,) = result.rows
    assert row.errors == 1
    assert row.scores["exact"] == pytest.approx(0.5)  # the failed example is not scored
    assert row.total_tokens == 0
    assert [e.answer for e in row.examples] == ["HI", "YO", None]
    assert client.session.attempts == []


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one configuration"):
        compare({}, [{"inputs": {"question": "q"}}], [])
    with pytest.raises(ValueError, match="'inputs' dict"):
        compare({"x": object()}, [{"question": "q"}], [], upload=False)  # type: ignore[dict-item]


def test_example_script_prints_the_table() -> None:
    hidden = {"LANGSMITH_API_KEY", "LANGCHAIN_API_KEY"}
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "Mixture-of-Agents configurations (local, not uploaded)" in done.stdout
    for name in CONFIGURATIONS:
        assert name in done.stdout


class StubLangSmith:
    """Records the dataset calls ``upload_dataset`` makes."""

    def __init__(self, existing: set[str]) -> None:
        self.existing = existing
        self.calls: list[tuple[str, object]] = []

    def has_dataset(self, *, dataset_name: str) -> bool:
        return dataset_name in self.existing

    def create_dataset(self, name: str, *, description: str) -> SimpleNamespace:
        self.calls.append(("create_dataset", name))
        return SimpleNamespace(id="dataset-id")

    def create_examples(self, *, dataset_id: str, examples: list[dict]) -> None:
        self.calls.append(("create_examples", (dataset_id, examples)))


def test_upload_dataset_creates_it_once() -> None:
    dataset = [{"inputs": {"question": "q"}, "outputs": {"keyword": "k"}}, {"inputs": {"q": 2}}]
    fresh = StubLangSmith(existing=set())
    assert upload_dataset(fresh, dataset, "moa-abc") == "moa-abc"  # type: ignore[arg-type]
    assert fresh.calls == [
        ("create_dataset", "moa-abc"),
        (
            "create_examples",
            (
                "dataset-id",
                [
                    {"inputs": {"question": "q"}, "outputs": {"keyword": "k"}},
                    {"inputs": {"q": 2}, "outputs": {}},
                ],
            ),
        ),
    ]
    known = StubLangSmith(existing={"moa-abc"})
    assert upload_dataset(known, dataset, "moa-abc") == "moa-abc"  # type: ignore[arg-type]
    assert known.calls == []
