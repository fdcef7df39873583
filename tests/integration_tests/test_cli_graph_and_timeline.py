"""``moa --graph`` (the line-up's Mermaid graph, no model called); the timeline after answers."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from langchain_moa import cli
from langchain_moa.testing import OpenAISimulator

ROOT = Path(__file__).resolve().parents[2]
PROVIDER_VARIABLES = {"OPENAI_API_KEY", "TOGETHER_API_KEY", "OPENAI_BASE_URL"}

RunMain = Callable[..., subprocess.CompletedProcess[str]]


class Terminal(io.StringIO):
    """Standard input that is a terminal (nothing piped)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> RunMain:
    """``cli.main(argv)`` in-process, with no provider configured and no piped question."""
    for name in PROVIDER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "stdin", Terminal(""))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        try:
            status = cli.main(list(args))
        except SystemExit as exit_:
            status = exit_.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), status, out, err)

    return run


THREE_BY_THREE = ("--proposer", "a", "--proposer", "b", "--proposer", "c", "--layers", "3")


def readme_mermaid() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split("```mermaid\n", 1)[1].split("```", 1)[0]


def test_graph_prints_the_readme_diagram_for_three_proposers_and_three_layers() -> None:
    env = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-m", "langchain_moa", "--graph", "--simulate", *THREE_BY_THREE],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # Nothing but the Mermaid text: it can be piped into a .mmd file.
    assert done.stdout == readme_mermaid()


def test_graph_calls_no_model_and_needs_no_question(run_main: RunMain) -> None:
    with OpenAISimulator() as sim:
        done = run_main(
            "--graph",
            "--base-url",
            sim.base_url,
            "--proposer",
            "m1",
            "--proposer",
            "m2",
            "--aggregator",
            "judge",
            "--layers",
            "2",
        )
        assert sim.requests == []
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("---\nconfig:")
    assert "layer_1\\3aproposer_1(proposer_1)" in done.stdout
    assert "proposer_2" not in done.stdout
    assert "layer_2" not in done.stdout
    assert "layer_1\\3afinish --> aggregate;" in done.stdout


def test_graph_of_a_server_whose_models_cannot_be_listed_is_a_usage_error(
    run_main: RunMain,
) -> None:
    done = run_main("--graph", "--base-url", "http://127.0.0.1:9/v1")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("moa: error: could not list")
    assert done.stdout == ""


def test_an_answer_is_followed_by_its_timeline(run_main: RunMain) -> None:
    with OpenAISimulator() as sim:
        argv = ["--base-url", sim.base_url, "--proposer", "m1", "--proposer", "m2"]
        done = run_main(*argv, "--layers", "2", "--no-progress", "q")
    assert done.returncode == 0, done.stderr
    after = done.stdout.split("Tokens:", 1)[1]
    assert "Timeline (seconds from the run's start)" in after
    rows = [line for line in after.splitlines() if line.lstrip().startswith(("1 ", "2 "))]
    assert [row.split()[1] for row in rows] == ["p0", "p1", "agg"]
    assert "critical path" in rows[-1]
    assert "█ critical path" in after  # the legend


def test_no_timeline_leaves_it_out(run_main: RunMain) -> None:
    with OpenAISimulator() as sim:
        argv = ["--base-url", sim.base_url, "--proposer", "m1", "--layers", "2"]
        done = run_main(*argv, "--no-progress", "--no-timeline", "q")
    assert done.returncode == 0, done.stderr
    assert "Tokens:" in done.stdout
    assert "Timeline" not in done.stdout


def test_help_documents_graph_and_no_timeline(run_main: RunMain) -> None:
    done = run_main("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "--graph" in text
    assert "without calling any model" in text
    assert "--no-timeline" in text
