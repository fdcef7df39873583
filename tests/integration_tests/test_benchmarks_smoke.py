"""Smoke test of the benchmarks: ``python -m benchmarks --quick`` runs end to end.

The benchmarks themselves are not part of the test run; this only checks that
the command works and writes every section with numeric figures (about 15 s),
and that ``--plots`` draws the charts from those results.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = (
    "critical_path",
    "overhead",
    "ttft",
    "tail_latency",
    "throughput",
    "memory",
    "serve",
    "cost",
    "strategies",
)
CHARTS = ("critical_path.png", "ttft.png", "tail_latency.png")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def benchmarks(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_charts(directory: Path) -> None:
    assert sorted(p.name for p in directory.iterdir()) == sorted(CHARTS)
    for name in CHARTS:
        data = (directory / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert len(data) > 10_000, name  # a drawn chart, not an empty canvas


@pytest.mark.timeout(150)
def test_quick_run_writes_every_section_with_numeric_figures(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    charts = tmp_path / "charts"
    done = benchmarks("--quick", "--output", str(output), "--plots", str(charts), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_charts(charts)
    assert "Critical-path efficiency" in done.stdout

    results = json.loads(output.read_text(encoding="utf-8"))
    assert results["quick"] is True
    assert tuple(results["sections"]) == SECTIONS
    for key in SECTIONS:
        figures = results["sections"][key]["figures"]
        assert figures, key
        for name, figure in figures.items():
            assert is_number(figure["value"]), (key, name, figure)
            assert figure["baseline"] is None or is_number(figure["baseline"]), (key, name)

    machine = results["machine"]
    assert isinstance(machine["cpu_count"], int)
    assert machine["python"]
    assert machine["platform"]
    assert results["params"]["memory_requests"] > 0

    # The token arrivals behind the ttft chart are recorded, per repeat, in order.
    arrivals = results["sections"]["ttft"]["details"]["token_arrivals_s"]
    for key in ("one_model", "synthesize"):
        assert len(arrivals[key]) == results["params"]["repeats"]
        for run in arrivals[key]:
            assert run == sorted(run)
            assert all(is_number(t) and t > 0 for t in run)
    # Every request's latency is in the tail section, for every variant.
    tail = results["sections"]["tail_latency"]["details"]
    for variant in ("no_deadline", "layer_deadline", "proposer_timeout"):
        assert len(tail[variant]["latencies_s"]) == results["params"]["tail_runs"]

    # The same charts, redrawn from the saved results without running anything.
    redrawn = tmp_path / "redrawn"
    again = benchmarks("--plots", str(redrawn), "--from-results", str(output), timeout=60)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "running" not in again.stderr
    assert_charts(redrawn)


def test_from_results_needs_plots() -> None:
    done = benchmarks("--from-results", "benchmarks/results.json", timeout=30)
    assert done.returncode == 2
    assert "--from-results needs --plots DIR" in done.stderr
