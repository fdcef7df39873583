"""``python -m benchmarks``: run every benchmark, print a table, write JSON."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks import (
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
    "strategies": strategies.run,
}
"""Every benchmark, by its key in the JSON results, in the order they run."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Benchmark MoAChatModel against the local OpenAI simulator on loopback: "
            "critical-path efficiency, framework overhead, time to first token, tail "
            "latency with a straggler, throughput, memory, serving over HTTP and aggregation "
            "strategies. Prints a "
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
    args = _parser().parse_args(argv)
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
    return 0
