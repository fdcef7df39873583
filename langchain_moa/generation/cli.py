r"""The ``moa-generate`` command: benchmark outputs for AlpacaEval 2.0 and MT-Bench.

It reads an instruction set, answers every item with a Mixture-of-Agents
ensemble and writes the answers in the format the evaluator consumes:

* AlpacaEval (``alpaca_eval.json``, a JSON list of objects with
  ``instruction``): a JSON list of the input objects with ``output`` and
  ``generator`` set, for ``alpaca_eval --model_outputs``.
* MT-Bench (FastChat's ``question.jsonl``: ``question_id``, ``category``,
  ``turns``): answer JSONL, one ``{"question_id", "answer_id", "model_id",
  "choices": [{"index": 0, "turns": [...]}], "tstamp"}`` per line, for
  FastChat's ``gen_judgment.py``. Turn 2 is asked with the history (user 1,
  final answer 1, user 2).

Runs are resumable: items already in the output file with a non-empty answer
are skipped. ``--concurrency`` workers each take a whole item (an MT-Bench
question: turn 1, then turn 2) and write it as soon as it is answered
(AlpacaEval: the JSON file is replaced atomically; MT-Bench: one appended
line), so an interruption leaves a valid partial file and loses at most the
unfinished items in flight. An item that fails is listed with its error in
``<output>.errors.log`` (JSON lines; a name FastChat's ``model_answer/*.jsonl``
and AlpacaEval never take for answers) and retried on the next run; the run
goes on and the exit status is 1. Every answer records its generator
(``generator``/``model_id`` and ``moa_line_up``: models, layers, sampling), and
a run refuses to resume into a file another generator wrote unless
``--allow-mixed-generators`` is given. Datasets are not bundled.

Example:
    ```bash
    moa-generate alpaca_eval.json -o together-moa.json --preset together-moa
    moa-generate question.jsonl -o answers.jsonl --base-url http://localhost:8000/v1 \\
        --proposer m1 --proposer m2 --aggregator m1 --layers 2
    moa-generate question.jsonl -o simulated.jsonl --simulate --limit 3
    ```
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from langchain_core.runnables import Runnable

from langchain_moa._extras import missing_extra
from langchain_moa.cli_arguments import add_model_arguments
from langchain_moa.errors import redact
from langchain_moa.generation.instructions import DEFAULT_CONCURRENCY, FORMATS
from langchain_moa.generation.runner import GenerationReport, agenerate
from langchain_moa.lineups import LineUp, same_endpoint
from langchain_moa.presets import REGISTRY

try:
    from rich.console import Console
    from rich.markup import escape
except ImportError as _missing:  # pragma: no cover - depends on the install
    raise missing_extra("cli", _missing) from _missing


_DEFAULT_PRESET = "together-moa"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moa-generate",
        description=(
            "Answer an AlpacaEval or MT-Bench instruction set with a Mixture-of-Agents "
            "ensemble and write the file the evaluator reads. Resumes a partial output "
            "written by the same generator; failed items go to <output>.errors.log and "
            "are retried on the next run."
        ),
        epilog=(
            "Keys come from the environment: TOGETHER_API_KEY (together presets), "
            "OPENAI_API_KEY (openai preset, --base-url servers that need one)."
        ),
    )
    parser.add_argument("input", type=Path, help="alpaca_eval.json or MT-Bench question.jsonl")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the output file")
    parser.add_argument("--format", choices=FORMATS, help="input format (default: detected)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--preset",
        choices=sorted(REGISTRY),
        help=f"a published line-up (default: {_DEFAULT_PRESET}, the paper's MoA)",
    )
    source.add_argument("--base-url", help="any OpenAI-compatible server (vLLM, Ollama, ...)")
    add_model_arguments(parser, layers_default=None)
    parser.add_argument("--generator-name", help="generator / model_id (default: line-up's)")
    parser.add_argument(
        "--allow-mixed-generators",
        action="store_true",
        help="resume into an output file that holds another generator's answers",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=(
            "items answered at once, one ensemble call each at a time "
            f"(default {DEFAULT_CONCURRENCY})"
        ),
    )
    parser.add_argument("--limit", type=int, help="answer only the first N items")
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="answer with the local simulator (offline), with the chosen line-up's model names",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _slug(model: str) -> str:
    """A file-name-safe short form of a model name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model.rsplit("/", 1)[-1]).strip("-").lower()


def _display_url(url: str) -> str:
    """The URL without any user name or password in it."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _line_up(args: argparse.Namespace) -> LineUp:
    """The line-up of the run: ``--proposer``/``--aggregator`` or the preset's.

    Its name is the default generator name: the preset's (with the layers when
    ``--layers`` changes them), or ``moa-{layers}l-{aggregator}``.
    """
    settings = {"temperature": args.temperature, "max_tokens": args.max_tokens}
    if args.proposers or args.aggregator:
        if not (args.proposers and args.aggregator):
            msg = "give both --proposer (one or more) and --aggregator"
            raise ValueError(msg)
        layers = args.layers or 3
        return same_endpoint(
            f"moa-{layers}l-{_slug(args.aggregator)}",
            tuple(args.proposers),
            args.aggregator,
            base_url=args.base_url,
            api_key_env="OPENAI_API_KEY",
            layers=layers,
            **settings,
        )
    preset = REGISTRY[args.preset or _DEFAULT_PRESET]
    layers = args.layers or preset.layers
    name = preset.generator_name
    if layers != preset.layers:
        name = f"{name}-{layers}l"
    return preset.lineup(name=name, layers=layers, **settings)


@dataclass(frozen=True)
class ModelChoice:
    """The ensemble of a run and how its answers are labelled.

    Attributes:
        llm: The ensemble.
        source: Where answers come from, for the user (no secrets).
        name: The default generator name.
        line_up: The line-up in words (models, layers, sampling settings),
            recorded with every answer.
    """

    llm: Runnable[Any, Any]
    source: str
    name: str
    line_up: str


def _describe(line_up: LineUp) -> str:
    """The line-up in words: what makes two runs the same generator."""
    proposers = ", ".join(spec.model for spec in line_up.proposers)
    text = (
        f"{proposers} -> {line_up.aggregator.model}, {line_up.layers} layers, "
        f"temperature {line_up.temperature:g}, max_tokens {line_up.max_tokens}"
    )
    return f"simulated: {text}" if line_up.simulated else text


def _simulated(args: argparse.Namespace, stack: ExitStack) -> ModelChoice:
    from langchain_moa.testing import OpenAISimulator

    line_up = _line_up(args)
    simulator = stack.enter_context(OpenAISimulator())
    source = "SIMULATED answers from the local simulator"
    line_up = line_up.on_simulator(simulator.base_url, source=source)
    return ModelChoice(line_up.build(), source, f"simulated-{line_up.name}", _describe(line_up))


def _served(args: argparse.Namespace) -> ModelChoice:
    if not (args.proposers and args.aggregator):
        msg = "--base-url needs --proposer (one or more) and --aggregator"
        raise ValueError(msg)
    line_up = _line_up(args)
    source = f"models served by {_display_url(args.base_url)}"
    return ModelChoice(line_up.build(), source, line_up.name, _describe(line_up))


def _preset(args: argparse.Namespace) -> ModelChoice:
    if args.proposers or args.aggregator:
        msg = "--proposer and --aggregator need --base-url or --simulate"
        raise ValueError(msg)
    name = args.preset or _DEFAULT_PRESET
    line_up = _line_up(args)
    llm = REGISTRY[name].build(
        layers=line_up.layers, temperature=line_up.temperature, max_tokens=line_up.max_tokens
    )
    return ModelChoice(llm, f"the {name} line-up", line_up.name, _describe(line_up))


def choose_model(args: argparse.Namespace, stack: ExitStack) -> ModelChoice:
    """Build the ensemble the arguments ask for.

    Args:
        args: The parsed command line.
        stack: Owns the simulator, if one is started.

    Returns:
        The ensemble, where its answers come from, its default generator name
        and its line-up in words.

    Raises:
        ValueError: If the arguments contradict each other or a key is missing.
    """
    if args.simulate:
        return _simulated(args, stack)
    if args.base_url:
        return _served(args)
    return _preset(args)


def _print_report(console: Console, report: GenerationReport) -> None:
    console.print(
        f"{report.completed} answered, {report.skipped} already present, "
        f"{report.failed} failed, of {report.total} -> {report.output_path}"
    )
    if report.completed:
        console.print(f"[bold]Tokens:[/] {escape(report.spend.describe())}")
    if report.failed:
        console.print(
            f"[red]failed items are listed in {report.errors_path}[/]; "
            "run the same command again to retry them"
        )


def _generate(args: argparse.Namespace, choice: ModelChoice, console: Console) -> GenerationReport:
    return asyncio.run(
        agenerate(
            choice.llm,
            args.input,
            args.output,
            generator_name=args.generator_name or choice.name,
            line_up=choice.line_up,
            allow_mixed_generators=args.allow_mixed_generators,
            fmt=args.format,
            concurrency=args.concurrency,
            limit=args.limit,
            show_progress=not args.no_progress,
            console=console,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``moa-generate`` command.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        0 if every item has an answer, 1 if some failed, 2 on a usage error
        (such as an output file another generator wrote), 130 when
        interrupted (the answers so far are kept).
    """
    args = _build_parser().parse_args(argv)
    console = Console(stderr=True)
    with ExitStack() as stack:
        try:
            choice = choose_model(args, stack)
            console.print(f"[bold]Source:[/] {choice.source}")
            report = _generate(args, choice, console)
        except ValueError as error:
            console.print(f"[red]error:[/] {redact(str(error))}")
            return 2
        except KeyboardInterrupt:
            console.print(
                f"[yellow]interrupted:[/] the answers so far are in {args.output}; "
                "run the same command again to resume"
            )
            return 130
    _print_report(console, report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
