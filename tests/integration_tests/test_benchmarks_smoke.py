"""Smoke test of the benchmarks: ``python -m benchmarks --quick`` runs end to end.

The benchmarks themselves are not part of the test run; this only checks that
the command works and writes every section with numeric figures (about 15 s).
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
    "strategies",
)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.timeout(120)
def test_quick_run_writes_every_section_with_numeric_figures(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
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
