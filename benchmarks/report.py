"""The results: a ``rich`` table for people and a JSON file for machines."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.common import Figure, Section

_FORMATS = {
    "x": "{:.3f}",
    "ms": "{:.3f} ms",
    "s": "{:.3f} s",
    "q/s": "{:.1f} q/s",
    "MiB": "{:.3f} MiB",
    "tokens": "{:,.0f} tokens",
    "$": "${:.5f}",
}


def format_value(value: float | None, unit: str) -> str:
    """A figure's value with its unit, or a dash."""
    if value is None or not math.isfinite(value):
        return "-"
    return _FORMATS.get(unit, "{:.3f} " + unit).format(value)


def _verdict(figure: Figure) -> str:
    if figure.met is None:
        return "-"
    return "[green]yes[/green]" if figure.met else "[red]NO[/red]"


def build_table(sections: list[Section], title: str) -> Table:
    """One row per figure: value, baseline and target side by side."""
    table = Table(title=title, show_lines=True)
    for header in ("Benchmark", "Figure", "Measured", "Compared to", "Baseline", "Target", "Met"):
        table.add_column(header, overflow="fold")
    for section in sections:
        for figure in section.figures:
            table.add_row(
                section.title,
                figure.label,
                format_value(figure.value, figure.unit),
                figure.compared_to or "-",
                format_value(figure.baseline, figure.unit),
                str(figure.target) if figure.target else "-",
                _verdict(figure),
            )
    return table


def print_table(console: Console, sections: list[Section], machine: dict[str, Any]) -> None:
    """Print the results table, titled with the machine it ran on."""
    title = (
        f"langchain-moa benchmarks: {machine['usable_cpus']} CPUs, "
        f"Python {machine['python']}, {machine['platform']} (medians)"
    )
    console.print(build_table(sections, title))


def write_json(path: Path, results: dict[str, Any]) -> None:
    """Write the results as indented JSON, creating the directory if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
