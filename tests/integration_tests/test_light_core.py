"""The core needs none of the extras: an ensemble builds and runs without them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from langchain_moa.testing import OpenAISimulator

ROOT = Path(__file__).resolve().parents[2]

# Makes ``import aiohttp`` and ``rich`` fail, as on an install
# without extras (``requests`` comes with langchain-core itself).
BLOCKER = textwrap.dedent(
    """
    import sys

    class _Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"aiohttp", "rich", "fastapi", "sse_starlette", "uvicorn"}:
                raise ImportError(f"No module named {name!r}", name=name.split(".")[0])
            return None

    sys.meta_path.insert(0, _Blocker())
    """
)


def run(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_an_ensemble_builds_and_runs_without_the_extras(
    openai_simulator: OpenAISimulator,
) -> None:
    done = run(
        f"""
        from langchain_openai import ChatOpenAI
        from langchain_moa import MoAChatModel

        def chat(name):
            return ChatOpenAI(base_url="{openai_simulator.base_url}", api_key="k", model=name,
                              max_retries=0)

        llm = MoAChatModel(proposers=[chat("light-p0"), chat("light-p1")],
                           aggregator=chat("light-agg"), layers=2, proposer_timeout=5)
        print(llm.invoke("q").content)
        print("".join(c.content for c in llm.stream("q")))
        assert not any(m in sys.modules for m in ("aiohttp", "rich"))
        """
    )
    assert done.returncode == 0, done.stderr[-2000:]
    expected = "light-agg read 2 references [light-p0, light-p1] and answers: q"
    assert done.stdout.splitlines() == [expected, expected]


def test_a_missing_extra_names_the_install_to_run() -> None:
    for module, extra in [
        ("langchain_moa.cli", "cli"),
        ("langchain_moa.timeline", "cli"),
        ("langchain_moa.testing.server", "simulator"),
        ("langchain_moa.experiments", "experiments"),
        ("langchain_moa.server", "server"),
    ]:
        done = run(f"import {module}")
        assert done.returncode == 1, module
        assert f"pip install 'langchain-moa[{extra}]'" in done.stderr, done.stderr[-800:]
