"""Every example runs offline against the simulator and shows the MoA data flow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(name: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_quickstart() -> None:
    out = run("quickstart.py")
    assert "aggregator read 3 references [proposer-a, proposer-b, proposer-c]" in out
    assert "layer 2 proposer-c" in out
    assert "streamed: aggregator read 3 references" in out


def test_per_layer_proposers() -> None:
    out = run("per_layer_proposers.py")
    assert "layers: 3" in out
    assert "judge read 1 references [large-1] and answers: Name three prime numbers." in out
