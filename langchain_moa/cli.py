"""The ``moa`` command: one Mixture-of-Agents answer, end to end, with live progress.

Model selection, first match wins:

1. ``--base-url`` or ``OPENAI_BASE_URL``: any OpenAI-compatible server (vLLM,
   Ollama, ...), with ``--proposer``/``--aggregator`` model names.
2. ``TOGETHER_API_KEY``: the paper's line-up on Together (MoA, or MoA-Lite with
   ``--layers 2``).
3. ``OPENAI_API_KEY``: the OpenAI line-up.
4. Nothing configured, or ``--simulate``: the bundled simulator on loopback; the
   answer is simulated and the command says so.
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
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from langchain_moa.chat_model import PROGRESS_EVENT, MoAChatModel
from langchain_moa.cli_arguments import add_model_arguments
from langchain_moa.errors import MoAError
from langchain_moa.presets import (
    MOA_AGGREGATOR,
    MOA_LITE_AGGREGATOR,
    OPENAI_AGGREGATOR,
    OPENAI_PROPOSERS,
    PAPER_PROPOSERS,
    TOGETHER_BASE_URL,
    openai_compatible_moa,
)

# Simulated latencies (seconds before the first token) so the progress display
# shows layers filling in as they would with real models.
_SIMULATED_LATENCY = (0.35, 0.6, 0.45, 0.8, 0.5, 0.7)


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
            self.aggregator = f"{data['model']} is synthesizing {data['references']} answers…"

    def render(self) -> Group:
        """The current state as a table."""
        table = Table(title="Mixture-of-Agents progress", expand=False)
        for column in ("layer", "proposer", "model", "status", "latency", "tokens"):
            table.add_column(column)
        for (layer, index), (model, status, latency, tokens) in sorted(self.rows.items()):
            table.add_row(str(layer), str(index), model, status, latency, tokens)
        footer = Text(self.aggregator or "")
        return Group(table, footer)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moa",
        description=(
            "Answer a question with a Mixture-of-Agents ensemble. With no key and no "
            "base URL configured, the bundled local simulator answers (simulated)."
        ),
        epilog=(
            "Environment: OPENAI_BASE_URL (+ OPENAI_API_KEY) for an OpenAI-compatible "
            "server; TOGETHER_API_KEY for the paper's line-up; OPENAI_API_KEY for OpenAI."
        ),
    )
    parser.add_argument("question", help="the question to answer")
    add_model_arguments(parser, layers_default=3)
    parser.add_argument(
        "--base-url", help="an OpenAI-compatible endpoint (default: $OPENAI_BASE_URL)"
    )
    parser.add_argument(
        "--simulate", action="store_true", help="use the local simulator even if keys are set"
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show live progress")
    return parser


def _choose(args: argparse.Namespace, stack: ExitStack) -> tuple[MoAChatModel, str]:
    """Pick the ensemble and describe where its answers come from."""
    settings: dict[str, Any] = {
        "layers": args.layers,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
    }
    lite = args.layers == 2
    base_url = None if args.simulate else args.base_url or os.environ.get("OPENAI_BASE_URL")
    if base_url:
        proposers = args.proposers or list(OPENAI_PROPOSERS)
        aggregator = args.aggregator or OPENAI_AGGREGATOR
        llm = openai_compatible_moa(proposers, aggregator, base_url=base_url, **settings)
        return llm, f"models served by {base_url}"
    together = None if args.simulate else os.environ.get("TOGETHER_API_KEY")
    if together:
        proposers = args.proposers or list(PAPER_PROPOSERS)
        aggregator = args.aggregator or (MOA_LITE_AGGREGATOR if lite else MOA_AGGREGATOR)
        llm = openai_compatible_moa(
            proposers, aggregator, base_url=TOGETHER_BASE_URL, api_key=together, **settings
        )
        return llm, "the paper's line-up on Together"
    openai_key = None if args.simulate else os.environ.get("OPENAI_API_KEY")
    if openai_key:
        proposers = args.proposers or list(OPENAI_PROPOSERS)
        aggregator = args.aggregator or OPENAI_AGGREGATOR
        llm = openai_compatible_moa(proposers, aggregator, api_key=openai_key, **settings)
        return llm, "OpenAI"
    from langchain_moa.testing import ModelBehavior, OpenAISimulator

    proposers = args.proposers or list(PAPER_PROPOSERS)
    aggregator = args.aggregator or (MOA_LITE_AGGREGATOR if lite else MOA_AGGREGATOR)
    behaviors = {
        name: ModelBehavior(first_token_latency=_SIMULATED_LATENCY[i % len(_SIMULATED_LATENCY)])
        for i, name in enumerate(proposers)
    }
    simulator = stack.enter_context(OpenAISimulator(behaviors=behaviors))
    llm = openai_compatible_moa(
        proposers, aggregator, base_url=simulator.base_url, api_key="simulator", **settings
    )
    return llm, "SIMULATED answers from the local simulator (no API key or base URL set)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``moa`` command.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    args = _build_parser().parse_args(argv)
    console = Console()
    board = ProgressBoard()
    with ExitStack() as stack:
        try:
            llm, source = _choose(args, stack)
        except ValueError as error:
            console.print(f"[red]error:[/] {error}")
            return 2
        console.print(f"[bold]Source:[/] {source}")
        if not args.no_progress:
            stack.enter_context(
                Live(get_renderable=board.render, console=console, refresh_per_second=8)
            )
        try:
            answer = llm.invoke(args.question, config={"callbacks": [board]})
        except MoAError as error:
            console.print(f"[red]Mixture-of-Agents failed:[/] {error}")
            return 1
    console.print()
    console.print("[bold]Answer:[/]")
    console.print(Text(answer.text))
    usage = answer.usage_metadata or {}
    failed = answer.response_metadata.get("failed_proposers", 0)
    console.print(
        f"\n[bold]Tokens:[/] {usage.get('input_tokens', 0)} in, "
        f"{usage.get('output_tokens', 0)} out, {usage.get('total_tokens', 0)} total "
        f"across all inner calls; failed proposers: {failed}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
