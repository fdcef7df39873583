"""``python -m benchmarks``: run every benchmark, print a table, write JSON (and charts).

``--plots DIR`` also writes PNG charts of the results (needs the ``[bench]``
extra); with ``--from-results PATH`` it draws them from a saved results file
and runs nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks import (
    cost,
    critical_path,
    memory,
    overhead,
    serve,
    strategies,
    tail,
    throughput,
    ttft,
)
from benchmarks.common import Section, Simulator
from benchmarks.machine import machine_info
from benchmarks.report import print_table, write_json
from benchmarks.simulator import RemoteSimulator
from benchmarks.sizes import DEFAULT, QUICK, Sizes

_PIPED_WIDTH = 200
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"

BENCHMARKS: dict[str, Callable[[Simulator, Sizes], Section]] = {
    "critical_path": critical_path.run,
    "overhead": overhead.run,
    "ttft": ttft.run,
    "tail_latency": tail.run,
    "throughput": throughput.run,
    "memory": memory.run,
    "serve": serve.run,
    "cost": cost.run,
    "strategies": strategies.run,
}
"""Every benchmark, by its key in the JSON results, in the order they run."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Benchmark MoAChatModel against the local OpenAI simulator on loopback: "
            "critical-path efficiency, framework overhead, time to first token, tail "
            "latency with a straggler, throughput, memory, serving over HTTP, cost per "
            "answer and aggregation strategies. Prints a "
            "table of medians next to baselines measured in the same run, and writes them "
            "as JSON."
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks that everything runs (~15 s)"
    )
    parser.add_argument(
        "--repeats",
        type=_positive,
        metavar="N",
        help=f"timed runs per configuration (default {DEFAULT.repeats}, --quick {QUICK.repeats})",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        metavar="PATH",
        help="where to write the JSON results (default: benchmarks/results.json)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--plots",
        type=Path,
        metavar="DIR",
        help=(
            "also write PNG charts to DIR: critical_path.png, ttft.png, tail_latency.png "
            "(needs the [bench] extra: matplotlib)"
        ),
    )
    parser.add_argument(
        "--from-results",
        type=Path,
        metavar="PATH",
        help="with --plots: draw the charts from this results JSON and run nothing",
    )
    return parser


def _sizes(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else DEFAULT
    return sizes if args.repeats is None else replace(sizes, repeats=args.repeats)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _run_all(names: Sequence[str], sizes: Sizes, log: Console) -> list[Section]:
    sections = []
    with RemoteSimulator() as sim:
        for name in names:
            log.print(f"[dim]running {name}...[/dim]")
            started = time.perf_counter()
            section = BENCHMARKS[name](sim, sizes)
            section.seconds = time.perf_counter() - started
            log.print(f"[dim]  {name}: {section.seconds:.1f} s[/dim]")
            sections.append(section)
    return sections


def _results(
    args: argparse.Namespace,
    argv: Sequence[str],
    sections: list[Section],
    machine: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks", *argv]),
        "quick": args.quick,
        "total_seconds": round(seconds, 1),
        "machine": machine,
        "params": _sizes(args).to_dict(),
        "sections": {section.key: section.to_dict() for section in sections},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks, print the table and write the JSON results.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status (0 even when a target is missed: this reports, it does not test).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.from_results is not None:
        if args.plots is None:
            parser.error("--from-results needs --plots DIR")
        results = json.loads(args.from_results.read_text(encoding="utf-8"))
        return _plot(results, args.plots, Console(stderr=True))
    sizes = _sizes(args)
    names = [name for name in BENCHMARKS if not args.only or name in args.only]
    width = None if sys.stdout.isatty() else _PIPED_WIDTH  # a terminal: rich measures it
    console, log = Console(width=width), Console(stderr=True, width=width)
    machine = machine_info()
    started = time.perf_counter()
    sections = _run_all(names, sizes, log)
    results = _results(args, argv, sections, machine, time.perf_counter() - started)
    write_json(args.output, results)
    print_table(console, sections, machine)
    console.print(f"results: {args.output}  ({results['total_seconds']} s in all)")
    return 0 if args.plots is None else _plot(results, args.plots, log)


def _plot(results: dict[str, Any], directory: Path, log: Console) -> int:
    """Write the charts of ``results`` to ``directory``; say what was written and skipped."""
    from benchmarks.plots import write_plots

    written, skipped = write_plots(results, directory)
    for path in written:
        log.print(f"chart: {path}")
    for reason in skipped:
        log.print(f"[yellow]chart skipped:[/yellow] {reason}")
    return 0
