"""Every example runs offline against the simulator and shows the MoA data flow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(name: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_quickstart() -> None:
    out = run("quickstart.py")
    assert "aggregator read 3 references [proposer-a, proposer-b, proposer-c]" in out
    assert "layer 2 proposer-c" in out
    assert "streamed: aggregator read 3 references" in out


def test_per_layer_proposers() -> None:
    out = run("per_layer_proposers.py")
    assert "layers: 3" in out
    assert "judge read 1 references [large-1] and answers: Name three prime numbers." in out


def test_langgraph_integration() -> None:
    out = run("langgraph_integration.py")
    assert "node: agg read 2 references [p1, p2] and answers: What is LangGraph?" in out
    assert "subgraph: agg read 2 references [p1, p2] and answers: What is a subgraph?" in out


def test_chains() -> None:
    out = run("chains.py")
    assert (
        "chain: agg read 3 references [p1, p2, p3] and answers: Explain photosynthesis simply."
        in out
    )
    rag = out.split("rag: ", 1)[1]
    # The retrieved context reached the ensemble (two of the three documents).
    assert "Answer from this context only:" in rag
    assert sum(doc in rag for doc in ("Rayleigh", "Mixture-of-Agents", "LangGraph builds")) == 2
    assert "Question: Why is the sky blue?" in rag


def test_structured_extraction() -> None:
    out = run("structured_extraction.py")
    for method in ("function_calling", "json_schema"):
        line = next(x for x in out.splitlines() if x.startswith(method))
        assert "age=36" in line
        assert "proposals read: 2" in line


def test_agent_calls_the_tool_and_answers_from_its_result() -> None:
    out = run("agent.py")
    assert "'name': 'get_weather', 'args': {'city': 'Paris'}" in out
    assert "tool: sunny and 21 degrees in Paris" in out
    assert "ai: agg used get_weather -> sunny and 21 degrees in Paris" in out
