"""The ``moa`` command's rough edges: usage errors, stdin, base URLs, wording, docs."""

from __future__ import annotations

import ast
import http.server
import io
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from langchain_moa import PROGRESS_EVENT, MoAChatModel, cli
from langchain_moa.testing import ModelBehavior, OpenAISimulator
from langchain_moa.testing.server import DEFAULT_MODELS

ROOT = Path(__file__).resolve().parents[2]
PROVIDER_VARIABLES = {"OPENAI_API_KEY", "TOGETHER_API_KEY", "OPENAI_BASE_URL"}

RunMain = Callable[..., subprocess.CompletedProcess[str]]


def moa(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m langchain_moa`` with no provider configured."""
    env = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "langchain_moa", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture
def no_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROVIDER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


class Piped(io.StringIO):
    """Standard input that is not a terminal."""

    def isatty(self) -> bool:
        return False


class Terminal(io.StringIO):
    """Standard input that is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], no_provider: None
) -> RunMain:
    """``cli.main(argv)`` in-process, its exit status and output as a CompletedProcess."""

    def run(*args: str, stdin: io.StringIO | None = None) -> subprocess.CompletedProcess[str]:
        monkeypatch.setattr(sys, "stdin", stdin if stdin is not None else Piped())
        try:
            status = cli.main(list(args))
        except SystemExit as exit_:
            status = exit_.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), status, out, err)

    return run


def assert_one_line_usage_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("moa: error: "), done.stderr
    for needle in needles:
        assert needle in last
    for dump in ("validation error", "input_value", "pydantic", "Traceback"):
        assert dump not in done.stdout + done.stderr
    assert "Source:" not in done.stdout


# 1. Inner models do not retry in the docs and examples: the ensemble retries.


def chat_openai_calls(source: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "ChatOpenAI"
    ]


def retries(call: ast.Call) -> object:
    for keyword in call.keywords:
        if keyword.arg == "max_retries":
            return ast.literal_eval(keyword.value)
    return "the ChatOpenAI default (2)"


def test_readme_quickstart_inner_models_do_not_retry() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", quickstart, flags=re.DOTALL)
    calls = [call for block in blocks for call in chat_openai_calls(block)]
    assert len(calls) >= 3
    assert [retries(call) for call in calls] == [0] * len(calls)


def test_examples_inner_models_do_not_retry() -> None:
    for example in sorted((ROOT / "examples").glob("*.py")):
        for call in chat_openai_calls(example.read_text(encoding="utf-8")):
            assert retries(call) == 0, f"{example.name}:{call.lineno}"
    quickstart = ast.get_docstring(ast.parse((ROOT / "examples" / "quickstart.py").read_text()))
    assert quickstart is not None
    assert "max_retries=0" in quickstart


# 2. Bad settings: one clear line, exit 2, no pydantic dump.


def test_layers_below_two_is_a_one_line_usage_error() -> None:
    done = moa("--layers", "1", "Why is the sky blue?")
    assert_one_line_usage_error(done, "--layers", "must be at least 2", "got 1")


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--layers", "0", "must be at least 2"),
        ("--layers", "two", "must be an integer, got 'two'"),
        ("--max-tokens", "0", "must be at least 1, got 0"),
        ("--temperature", "-1", "must be at least 0, got -1"),
        ("--temperature", "warm", "must be a number, got 'warm'"),
    ],
)
def test_other_bad_settings_are_usage_errors(
    run_main: RunMain, option: str, value: str, needle: str
) -> None:
    assert_one_line_usage_error(run_main(option, value, "q"), option, needle)


def test_an_invalid_ensemble_is_reported_in_one_line(
    monkeypatch: pytest.MonkeyPatch, run_main: RunMain
) -> None:
    def invalid(*args: object, **kwargs: object) -> MoAChatModel:
        with OpenAISimulator() as sim:
            return MoAChatModel(
                proposers=[sim.chat_model("p")], aggregator=sim.chat_model("a"), layers=1
            )

    monkeypatch.setattr(cli.LineUp, "build", invalid)
    done = run_main("--no-progress", "q")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "moa: error: layers must be at least 2 (one proposer layer and the aggregator), got 1"
    ]
    assert "Source:" not in done.stdout


# 3. An empty question is refused before any model is called.


@pytest.mark.parametrize("question", ["", "   \n\t"])
def test_an_empty_question_is_refused(run_main: RunMain, question: str) -> None:
    assert_one_line_usage_error(run_main("--layers", "2", question), "the question is empty")


@pytest.mark.parametrize("args", [(), ("-",)])
def test_an_empty_question_on_stdin_is_refused(run_main: RunMain, args: tuple[str, ...]) -> None:
    done = run_main("--layers", "2", *args, stdin=Piped("\n \n"))
    assert_one_line_usage_error(done, "the question is empty")


# 4. A custom base URL without --proposer: the server's own models.


def test_base_url_without_proposers_uses_the_servers_models(run_main: RunMain) -> None:
    with OpenAISimulator() as sim:
        done = run_main("--base-url", sim.base_url, "--layers", "2", "--no-progress", "q")
        asked = {request.model for request in sim.requests}
    assert done.returncode == 0, done.stdout + done.stderr
    listed = list(DEFAULT_MODELS)
    assert asked == set(listed)
    assert f"{listed[0]} read {len(listed)} references" in done.stdout
    source = " ".join(done.stdout.split())
    assert f"(listed by its GET /models): {', '.join(listed)} propose, {listed[0]} aggregates" in (
        source
    )
    assert "gpt-4o" not in done.stdout


def test_openai_base_url_lists_at_most_six_proposers_and_keeps_the_aggregator(
    monkeypatch: pytest.MonkeyPatch, run_main: RunMain
) -> None:
    with OpenAISimulator() as sim:
        for extra in ("x1", "x2", "x3"):
            sim.set_behavior(extra, ModelBehavior())
        monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)
        done = run_main("--aggregator", "judge", "--layers", "2", "--no-progress", "q")
        asked = {request.model for request in sim.requests}
    assert done.returncode == 0, done.stdout + done.stderr
    first_six = [*DEFAULT_MODELS, "x1", "x2", "x3"][:6]
    assert asked == {*first_six, "judge"}
    assert f"judge read 6 references [{', '.join(first_six)}]" in done.stdout


def test_base_url_with_proposers_and_no_aggregator_uses_the_first_proposer(
    run_main: RunMain,
) -> None:
    argv = ["--proposer", "m2", "--proposer", "m3", "--layers", "2", "--no-progress", "q"]
    with OpenAISimulator() as sim:
        done = run_main("--base-url", sim.base_url, *argv)
        asked = [request.model for request in sim.requests]
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(asked) == ["m2", "m2", "m3"]
    assert "m2 read 2 references [m2, m3] and answers: q" in done.stdout


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class FixedAnswer(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the server's ``body`` (a JSON text)."""

    def do_GET(self) -> None:
        body = self.server.body.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def odd_server() -> Iterator[http.server.HTTPServer]:
    """A loopback server whose ``GET /models`` answer a test sets (``server.body``)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), FixedAnswer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_base_url_whose_models_cannot_be_listed_asks_for_proposers(run_main: RunMain) -> None:
    url = closed_port_url()
    done = run_main("--base-url", url, "--layers", "2", "q")
    assert_one_line_usage_error(done, f"could not list the models of {url}", "--proposer")


def test_base_url_listing_not_found_asks_for_proposers(run_main: RunMain) -> None:
    with OpenAISimulator() as sim:
        url = sim.base_url.rsplit("/v1", 1)[0] + "/no-such-api"
        done = run_main("--base-url", url, "--layers", "2", "--aggregator", "m1", "q")
        assert not sim.requests
    assert_one_line_usage_error(done, "could not list the models of", "404", "--proposer")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"object": "list", "data": []}', "it lists no models"),
        ('{"data": [{"object": "model"}]}', "it lists no models"),
        ("[1, 2]", "its answer is not an OpenAI model list"),
    ],
)
def test_base_url_listing_nothing_usable_asks_for_proposers(
    run_main: RunMain, odd_server: http.server.HTTPServer, body: str, reason: str
) -> None:
    odd_server.body = body  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{odd_server.server_port}/v1"
    done = run_main("--base-url", url, "q")
    assert_one_line_usage_error(done, reason, "--proposer MODEL", "--aggregator MODEL")


def test_help_documents_the_base_url_behaviour_and_stdin() -> None:
    done = moa("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "GET /models" in text
    assert "standard input" in text


# 5. Progress wording.


@pytest.mark.parametrize(("references", "words"), [(1, "1 answer…"), (3, "3 answers…")])
def test_progress_pluralises_the_answers(references: int, words: str) -> None:
    board = cli.ProgressBoard()
    data = {"kind": "aggregation_started", "model": "agg", "references": references}
    board.on_custom_event(PROGRESS_EVENT, data, run_id=uuid4())
    assert board.aggregator == f"agg is synthesizing {words}"


# 6. The question from standard input.


def test_the_question_can_be_piped_in() -> None:
    done = moa("--layers", "2", "--no-progress", stdin="Why is the sky blue?\n")
    assert done.returncode == 0, done.stderr
    assert "answers: Why is the sky blue?" in done.stdout
    assert "SIMULATED" in done.stdout


def test_a_dash_reads_the_question_from_stdin(run_main: RunMain) -> None:
    with OpenAISimulator() as sim:
        argv = ["--base-url", sim.base_url, "--proposer", "m1", "--layers", "2", "--no-progress"]
        done = run_main(*argv, "-", stdin=Terminal("What is MoA?\n"))
    assert done.returncode == 0, done.stderr
    assert "m1 read 1 references [m1] and answers: What is MoA?" in done.stdout


def test_no_question_and_a_terminal_on_stdin_is_a_usage_error(run_main: RunMain) -> None:
    done = run_main("--layers", "2", stdin=Terminal("not read"))
    assert_one_line_usage_error(done, "no question", "echo QUESTION | moa")
