"""The ``moa`` command: one Mixture-of-Agents answer, end to end, with live progress.

Model selection, first match wins:

1. ``--base-url`` or ``OPENAI_BASE_URL``: any OpenAI-compatible server (vLLM,
   Ollama, ...), with ``--proposer``/``--aggregator`` model names. Without
   ``--proposer`` the server's ``GET /models`` list supplies them (its first six
   models propose, its first aggregates); if it cannot be read, the command
   stops and asks for the names. Without ``--aggregator`` the first proposer
   aggregates.
2. ``TOGETHER_API_KEY``: the paper's line-up on Together (MoA, or MoA-Lite with
   ``--layers 2``).
3. ``OPENAI_API_KEY``: the OpenAI line-up.
4. Nothing configured, or ``--simulate``: the bundled simulator on loopback; the
   answer is simulated and the command says so.

``moa --graph`` prints the chosen line-up's graph as Mermaid text and exits
without calling any model (it needs no question). After an answer, ``moa``
prints the run's timeline (see :mod:`langchain_moa.timeline`) unless
``--no-timeline``.

``moa serve ...`` runs the OpenAI-compatible server instead (see
:mod:`langchain_moa.server.cli`); to ask the question "serve", write
``moa -- serve``.

The question is the positional argument or, when it is ``-`` or missing and
standard input is not a terminal, standard input. A usage error (no or an
empty question, ``--layers 1``, a setting the ensemble refuses, a server whose
models cannot be listed) is reported as one ``moa: error: ...`` line (argparse
puts the usage before it for a bad argument) with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from openai import OpenAI, OpenAIError
from pydantic import ValidationError

from langchain_moa._extras import missing_extra
from langchain_moa.chat_model import MoAChatModel
from langchain_moa.cli_arguments import add_model_arguments
from langchain_moa.errors import MoAError, describe_error, redact
from langchain_moa.lineups import LineUp, same_endpoint
from langchain_moa.presets import REGISTRY, paper_preset
from langchain_moa.report import Spend
from langchain_moa.runs import PROGRESS_EVENT
from langchain_moa.timeline import bar_width_for, render_timeline

try:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text
except ImportError as _missing:  # pragma: no cover - depends on the install
    raise missing_extra("cli", _missing) from _missing

# Simulated latencies (seconds before the first token) so the progress display
# shows layers filling in as they would with real models.
_SIMULATED_LATENCY = (0.35, 0.6, 0.45, 0.8, 0.5, 0.7)

# A custom server without --proposer: at most this many of its listed models
# propose (the paper's line-up has six), and the listing may take this long.
_MAX_LISTED_PROPOSERS = 6
_LIST_TIMEOUT_S = 10.0
_NAME_THE_MODELS = "name them with --proposer MODEL (repeatable) and --aggregator MODEL"


class ProgressBoard(BaseCallbackHandler):
    """Collects ``moa_progress`` events into a table that ``rich`` can render."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, int], list[str]] = {}
        self.aggregator: str | None = None

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """Record one progress event."""
        if name != PROGRESS_EVENT:
            return
        kind = data["kind"]
        if kind == "layer_started":
            for index, model in enumerate(data["models"]):
                self.rows[(data["layer"], index)] = [model, "running…", "", ""]
        elif kind == "proposer_finished":
            p = data["proposal"]
            tokens = str(p["usage"]["total_tokens"]) if p["usage"] else "-"
            status = "[green]answered[/]" if p["error"] is None else f"[red]{p['error']}[/]"
            self.rows[(p["layer"], p["index"])] = [
                p["model"],
                status,
                f"{p['latency_s']:.2f}s",
                tokens,
            ]
        elif kind == "aggregation_started":
            answers = _count(data["references"], "answer")
            self.aggregator = f"{data['model']} is synthesizing {answers}…"

    def render(self) -> Group:
        """The current state as a table."""
        table = Table(title="Mixture-of-Agents progress", expand=False)
        for column in ("layer", "proposer", "model", "status", "latency", "tokens"):
            table.add_column(column)
        for (layer, index), (model, status, latency, tokens) in sorted(self.rows.items()):
            table.add_row(str(layer), str(index), model, status, latency, tokens)
        footer = Text(self.aggregator or "")
        return Group(table, footer)


def _count(number: int, noun: str) -> str:
    """``"1 answer"``, ``"3 answers"``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moa",
        description=(
            "Answer a question with a Mixture-of-Agents ensemble. With no key and no "
            "base URL configured, the bundled local simulator answers (simulated). "
            "'moa serve --help': serve ensembles over an OpenAI-compatible HTTP API."
        ),
        epilog=(
            "Environment: OPENAI_BASE_URL (+ OPENAI_API_KEY) for an OpenAI-compatible "
            "server; TOGETHER_API_KEY for the paper's line-up; OPENAI_API_KEY for OpenAI. "
            "With a base URL and no --proposer, the server's GET /models list supplies the "
            f"models: its first {_MAX_LISTED_PROPOSERS} propose and its first aggregates "
            "(unless --aggregator); if the list cannot be read, moa stops and asks for "
            "--proposer and --aggregator. With a base URL, --proposer and no --aggregator, "
            "the first proposer aggregates."
        ),
    )
    parser.add_argument(
        "question",
        nargs="?",
        help="the question to answer; '-' or none: read it from standard input (piped)",
    )
    add_model_arguments(parser, layers_default=3)
    parser.add_argument(
        "--base-url",
        help=(
            "an OpenAI-compatible endpoint (default: $OPENAI_BASE_URL); without --proposer "
            "its GET /models list supplies the models"
        ),
    )
    parser.add_argument(
        "--simulate", action="store_true", help="use the local simulator even if keys are set"
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show live progress")
    parser.add_argument(
        "--no-timeline",
        action="store_true",
        help="do not print the timeline (a Gantt chart of every call) after the answer",
    )
    parser.add_argument(
        "--graph",
        action="store_true",
        help=(
            "print the line-up's graph as Mermaid text and exit, without calling any model "
            "(no question needed)"
        ),
    )
    return parser


def _read_question(given: str | None, parser: argparse.ArgumentParser) -> str:
    """The question: the argument, or standard input for ``-`` or none (if piped).

    Raises:
        SystemExit: Status 2 (``parser.error``) if there is no question or it is
            empty.
    """
    if given is None or given == "-":
        if given is None and (sys.stdin is None or sys.stdin.isatty()):
            parser.error("no question: give one as an argument, or pipe it: echo QUESTION | moa")
        given = sys.stdin.read() if sys.stdin is not None else ""
    if not given.strip():
        parser.error("the question is empty: give a question to answer")
    return given.strip()


def _one_line(error: ValueError) -> str:
    """A refused setting as one line: pydantic's messages without its input dump."""
    if isinstance(error, ValidationError):
        parts = []
        for detail in error.errors(include_url=False, include_context=False, include_input=False):
            message = detail["msg"].removeprefix("Value error, ")
            where = ".".join(str(part) for part in detail["loc"])
            parts.append(f"{where}: {message}" if where else message)
        text = "; ".join(parts)
    else:
        text = str(error)
    return redact(" ".join(text.split()))


def _served_models(base_url: str) -> list[str]:
    """The model ids an OpenAI-compatible server lists at ``GET /models``.

    Raises:
        ValueError: The list cannot be read or is empty; the message asks for
            ``--proposer`` and ``--aggregator``.
    """
    key = os.environ.get("OPENAI_API_KEY") or "EMPTY"
    try:
        with OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=_LIST_TIMEOUT_S) as api:
            listed = [getattr(model, "id", None) for model in api.models.list()]
    except OpenAIError as error:
        reason = describe_error(error)
    except (ValueError, TypeError, AttributeError):
        reason = "its answer is not an OpenAI model list"
    else:
        ids = [name for name in listed if isinstance(name, str) and name.strip()]
        if ids:
            return list(dict.fromkeys(ids))
        reason = "it lists no models"
    msg = f"could not list the models of {base_url} at GET /models ({reason}); {_NAME_THE_MODELS}"
    raise ValueError(msg)


def _custom_server(args: argparse.Namespace, base_url: str, settings: dict[str, Any]) -> LineUp:
    """The ensemble on an OpenAI-compatible server, named or listed models."""
    proposers = args.proposers or _served_models(base_url)[:_MAX_LISTED_PROPOSERS]
    aggregator = args.aggregator or proposers[0]
    listed = "" if args.proposers else " (listed by its GET /models)"
    source = f"models served by {base_url}{listed}: {', '.join(proposers)} propose, "
    return same_endpoint(
        "moa",
        proposers,
        aggregator,
        base_url=base_url,
        api_key_env="OPENAI_API_KEY",
        source=f"{source}{aggregator} aggregates",
        **settings,
    )


def choose_lineup(args: argparse.Namespace, stack: ExitStack) -> LineUp:
    """Pick the line-up, first match wins (see the module docstring).

    The published line-ups come from :data:`langchain_moa.presets.REGISTRY`:
    ``together-moa-lite`` for ``--layers 2``, else ``together-moa`` (on
    Together, or on the simulator), and ``openai``.

    Args:
        args: Parsed options: ``layers``, ``proposers``, ``aggregator``,
            ``temperature``, ``max_tokens``, ``base_url`` and ``simulate``.
        stack: Owns the simulator, if one is started.

    Returns:
        The line-up, named ``moa``; its ``source`` says where answers come from.

    Raises:
        ValueError: A server's models cannot be listed.
    """
    settings: dict[str, Any] = {
        "layers": args.layers,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
    }
    base_url = None if args.simulate else args.base_url or os.environ.get("OPENAI_BASE_URL")
    if base_url:
        return _custom_server(args, base_url, settings)
    chosen = {"name": "moa", "proposers": args.proposers, "aggregator": args.aggregator}
    paper, openai = paper_preset(args.layers), REGISTRY["openai"]
    if not args.simulate and os.environ.get(paper.api_key_env):
        return paper.lineup(**chosen, **settings, source="the paper's line-up on Together")
    if not args.simulate and os.environ.get(openai.api_key_env):
        return openai.lineup(**chosen, **settings, source="OpenAI")
    from langchain_moa.testing import ModelBehavior, OpenAISimulator

    lineup = paper.lineup(**chosen, **settings)
    behaviors = {
        spec.model: ModelBehavior(
            first_token_latency=_SIMULATED_LATENCY[i % len(_SIMULATED_LATENCY)]
        )
        for i, spec in enumerate(lineup.proposers)
    }
    simulator = stack.enter_context(OpenAISimulator(behaviors=behaviors))
    return lineup.on_simulator(
        simulator.base_url,
        source="SIMULATED answers from the local simulator (no API key or base URL set)",
    )


def _choose(args: argparse.Namespace, stack: ExitStack) -> tuple[MoAChatModel, str]:
    """Build the chosen ensemble and describe where its answers come from."""
    lineup = choose_lineup(args, stack)
    return lineup.build(), lineup.source


def _print_graph(args: argparse.Namespace, prog: str) -> int:
    """``moa --graph``: write the chosen line-up's graph as Mermaid text; call no model.

    Args:
        args: Parsed options (the line-up's).
        prog: The command's name, for a usage error.

    Returns:
        0, or 2 if the line-up cannot be chosen.
    """
    with ExitStack() as stack:
        try:
            llm, _ = _choose(args, stack)
        except ValueError as error:
            sys.stderr.write(f"{prog}: error: {_one_line(error)}\n")
            return 2
        sys.stdout.write(llm.graph.get_graph(xray=True).draw_mermaid())
    return 0


def _serve(argv: list[str]) -> int:
    """``moa serve ...``: the OpenAI-compatible server (needs the ``server`` extra)."""
    try:
        from langchain_moa.server.cli import main as serve
    except ImportError as error:
        sys.stderr.write(
            f"moa serve: error: the server needs the server extra "
            f"(pip install 'langchain-moa[server]'); missing: {error.name}\n"
        )
        return 2
    return serve(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``moa`` command (``moa serve ...`` runs the server).

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 answered, 1 the ensemble failed, 2 a usage error.

    Raises:
        SystemExit: Status 2 from argparse for a bad argument or no question
            (and 0 after ``--help``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.graph:
        return _print_graph(args, parser.prog)
    question = _read_question(args.question, parser)
    console = Console()
    board = ProgressBoard()
    with ExitStack() as stack:
        try:
            llm, source = _choose(args, stack)
        except ValueError as error:
            sys.stderr.write(f"{parser.prog}: error: {_one_line(error)}\n")
            return 2
        console.print(Text.assemble(("Source:", "bold"), " ", source))
        if not args.no_progress:
            stack.enter_context(
                Live(get_renderable=board.render, console=console, refresh_per_second=8)
            )
        try:
            answer = llm.invoke(question, config={"callbacks": [board]})
        except MoAError as error:
            console.print(f"[red]Mixture-of-Agents failed:[/] {error}")
            return 1
    console.print()
    console.print("[bold]Answer:[/]")
    console.print(Text(answer.text))
    spend = Spend()
    spend.add(answer)
    failed = answer.response_metadata.get("failed_proposers", 0)
    console.print(f"\n[bold]Tokens:[/] {escape(spend.describe())}; failed proposers: {failed}")
    if not args.no_timeline:
        console.print()
        width = bar_width_for(console.width)
        console.print(render_timeline(answer.response_metadata, width=width))
    return 0


if __name__ == "__main__":
    sys.exit(main())
