"""LangGraph Server (``langgraph dev``) serving ``langchain_moa.deploy`` against the simulator.

One ``langgraph dev`` process for the module: a free port, no reload, no
browser, no analytics, no LangSmith key, in a temporary working directory
(it writes ``.langgraph_api/`` there); ready within 60 s or the tests fail,
and its whole process group is killed at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from langchain_moa.testing import OpenAISimulator
from tests.simulated_usage import moa_lite_usage

pytest.importorskip("langgraph_api")
from langgraph.pregel.remote import RemoteGraph
from langgraph_sdk import get_sync_client

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "Why is the sky blue?"
EXPECTED = f"agg read 2 references [p1, p2] and answers: {QUESTION}"
START_TIMEOUT_S = 60
_MOVED = re.compile(r"already in use, using port (\d+) instead")

pytestmark = pytest.mark.timeout(180)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(directory: Path) -> Path:
    """``langgraph.json`` with its paths made absolute, in ``directory``."""
    config = json.loads((ROOT / "langgraph.json").read_text(encoding="utf-8"))
    config["dependencies"] = [str(ROOT)]
    config["graphs"] = {
        name: str(ROOT / path.removeprefix("./")) for name, path in config["graphs"].items()
    }
    config["http"]["app"] = str(ROOT / config["http"]["app"].removeprefix("./"))
    path = directory / "langgraph.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def _environment(sim: OpenAISimulator) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LANGSMITH_", "LANGCHAIN_")) and key not in {"OPENAI_API_KEY"}
    }
    env.update(
        LANGGRAPH_CLI_NO_ANALYTICS="1",
        LANGGRAPH_NO_VERSION_CHECK="1",
        LANGSMITH_TRACING="false",
        OPENAI_BASE_URL=sim.base_url,
        MOA_PROPOSERS="p1,p2",
        MOA_AGGREGATOR="agg",
        MOA_LAYERS="2",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    env.pop("TOGETHER_API_KEY", None)
    return env


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ok", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("langgraph")
    langgraph = Path(sys.executable).with_name("langgraph")
    port = _free_port()
    with OpenAISimulator() as sim:
        process = subprocess.Popen(
            [
                str(langgraph), "dev", "--no-browser", "--no-reload", "--port", str(port),
                "--n-jobs-per-worker", "10", "--config", str(_config(directory)),
            ],
            cwd=directory,
            env=_environment(sim),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )  # fmt: skip
        log: list[str] = []
        assert process.stdout is not None
        reader = threading.Thread(target=lambda: log.extend(process.stdout), daemon=True)
        reader.start()
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _ready(url):
                moved = _MOVED.search("".join(log))
                if moved:
                    url = f"http://127.0.0.1:{moved.group(1)}"
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("langgraph dev did not start:\n" + "".join(log)[-4000:])
                time.sleep(0.2)
            yield url
        finally:
            _kill_group(process)


def _kill_group(process: subprocess.Popen[str]) -> None:
    """SIGTERM to the whole process group, SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _question() -> dict[str, list[dict[str, str]]]:
    return {"messages": [{"role": "user", "content": QUESTION}]}


def test_runs_wait(server_url: str) -> None:
    client = get_sync_client(url=server_url)
    state = client.runs.wait(None, "moa", input=_question())
    assert state["messages"][-1]["content"] == EXPECTED
    usage = moa_lite_usage(QUESTION, proposers=2)  # the simulator's word counts
    assert state["messages"][-1]["usage_metadata"]["total_tokens"] == usage["total_tokens"]


def test_messages_stream_carries_the_aggregators_tokens_only(server_url: str) -> None:
    client = get_sync_client(url=server_url)
    tokens = []
    for part in client.runs.stream(None, "moa", input=_question(), stream_mode="messages-tuple"):
        if part.event == "messages":
            chunk, metadata = part.data
            assert metadata["langgraph_node"] == "moa"
            tokens.append(chunk["content"])
    assert len(tokens) > 3  # streamed token by token
    assert "".join(tokens) == EXPECTED  # no proposer's text


def test_two_turn_thread(server_url: str) -> None:
    client = get_sync_client(url=server_url)
    thread = client.threads.create()
    client.runs.wait(thread["thread_id"], "moa", input=_question())
    follow_up = {"messages": [{"role": "user", "content": "And at sunset?"}]}
    state = client.runs.wait(thread["thread_id"], "moa", input=follow_up)
    contents = [m["content"] for m in state["messages"]]
    assert contents == [
        QUESTION,
        EXPECTED,
        "And at sunset?",
        "agg read 2 references [p1, p2] and answers: And at sunset?",
    ]
    assert len(client.threads.get_state(thread["thread_id"])["values"]["messages"]) == 4


def test_remote_graph(server_url: str) -> None:
    remote = RemoteGraph("moa", url=server_url)
    state = remote.invoke(_question())
    assert state["messages"][-1]["content"] == EXPECTED
    engine = RemoteGraph("moa_engine", url=server_url).invoke(_question())
    assert [p["model"] for p in engine["proposals"]] == ["p1", "p2"]


def test_openai_app_is_mounted(server_url: str) -> None:
    with openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0) as api:
        assert [m.id for m in api.models.list()] == ["moa"]
        answer = api.chat.completions.create(
            model="moa", messages=[{"role": "user", "content": QUESTION}]
        )
    assert answer.choices[0].message.content == EXPECTED
