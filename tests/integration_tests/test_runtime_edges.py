"""The ensemble at the edges of its runtime, over real HTTP to the simulator.

1. A child forked from a process that already made calls (multiprocessing's
   ``"fork"``, ``gunicorn --preload``, Celery prefork) answers.
2. Every new event loop (``asyncio.run`` after ``asyncio.run``, sync and async
   calls in turn) answers, and leaves no HTTP client or connection behind.
3. Ctrl-C during a sync ``batch`` ends it at once and closes its requests.

Each test that could hang bounds itself (a join, a read with a timeout), so a
hang fails the test instead of stalling the run.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import multiprocessing
import os
import queue
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage

import langchain_moa
from langchain_moa import MoAChatModel
from langchain_moa import loop_clients as loop_clients_module
from langchain_moa.testing import ModelBehavior, OpenAISimulator
from tests.integration_tests.test_structured_output import Joke, magic_function

pytestmark = pytest.mark.timeout(150, method="thread")

Q = "q"
HANG_BOUND_S = 60.0
"""How long a call that must answer may take before the test calls it hung."""


def name(tag: str, role: str) -> str:
    return f"edge-{tag}-{role}"


def team(sim: OpenAISimulator, tag: str, *, fallback: bool = False, **kwargs: Any) -> MoAChatModel:
    """Two proposers ``edge-{tag}-p{i}``, aggregator ``-agg``, fallback ``-fb``."""
    return MoAChatModel(
        proposers=[sim.chat_model(name(tag, "p0")), sim.chat_model(name(tag, "p1"))],
        aggregator=sim.chat_model(name(tag, "agg")),
        fallback_aggregator=sim.chat_model(name(tag, "fb")) if fallback else None,
        layers=2,
        max_retries=0,
        **kwargs,
    )


def answer_of(tag: str, role: str = "agg") -> str:
    references = f"{name(tag, 'p0')}, {name(tag, 'p1')}"
    return f"{name(tag, role)} read 2 references [{references}] and answers: {Q}"


def assert_answered(result: BaseMessage, tag: str, role: str = "agg") -> None:
    errors = [p["error"] for layer in result.response_metadata["proposals"] for p in layer]
    assert errors == [None, None], errors
    assert result.content == answer_of(tag, role)


def streamed(llm: MoAChatModel) -> str:
    return "".join(chunk.text for chunk in llm.stream(Q))


async def astreamed(llm: MoAChatModel) -> str:
    return "".join([chunk.text async for chunk in llm.astream(Q)])


# -- 1. forked children ------------------------------------------------------------


def _call_in_child(llm: MoAChatModel, results: Any) -> None:
    try:
        results.put(("answered", llm.invoke(Q).content, streamed(llm)))
    except BaseException as error:  # the parent reports it
        results.put(("failed", repr(error), ""))


def call_in_forked_child(llm: MoAChatModel) -> tuple[str, str, str]:
    """A forked child's ``invoke`` and ``stream`` of ``llm``; fails the test if it hangs."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_call_in_child, args=(llm, results), daemon=True)
    child.start()
    try:
        return results.get(timeout=HANG_BOUND_S)
    except queue.Empty:
        pytest.fail(f"the forked child did not answer within {HANG_BOUND_S:g}s")
    finally:
        if child.is_alive():
            child.join(5)
        if child.is_alive():
            child.kill()
            child.join()


TIMEOUTS = {
    "proposer_timeout": 20,
    "aggregator_timeout": 20,
    "aggregator_first_token_timeout": 20,
    "layer_deadline": 20,
}


@pytest.mark.skipif(sys.platform == "win32", reason="no fork")
def test_a_forked_child_answers_after_its_parent_called(
    keep_alive_simulator: OpenAISimulator,
) -> None:
    tag = "fork"
    llm = team(keep_alive_simulator, tag, **TIMEOUTS)
    assert_answered(llm.invoke(Q), tag)  # the parent's background loop and client exist
    outcome = call_in_forked_child(llm)
    assert outcome == ("answered", answer_of(tag), answer_of(tag))
    assert_answered(llm.invoke(Q), tag)  # and the parent goes on


@pytest.mark.skipif(sys.platform == "win32", reason="no fork")
def test_a_child_forked_while_the_parent_calls_answers(
    keep_alive_simulator: OpenAISimulator,
) -> None:
    tag = "fork-busy"
    for proposer in ("p0", "p1"):
        keep_alive_simulator.set_behavior(
            name(tag, proposer), ModelBehavior(first_token_latency=1.5)
        )
    # The parent's call holds both concurrency slots when the child is forked.
    llm = team(keep_alive_simulator, tag, max_concurrency=2, **TIMEOUTS)
    assert_answered(llm.invoke(Q), tag)
    parent: dict[str, BaseMessage] = {}
    busy = threading.Thread(target=lambda: parent.update(result=llm.invoke(Q)))
    busy.start()
    deadline = time.monotonic() + HANG_BOUND_S
    while keep_alive_simulator.in_flight < 2:
        assert time.monotonic() < deadline, "the parent's proposers were never called"
        time.sleep(0.01)
    outcome = call_in_forked_child(llm)
    busy.join(HANG_BOUND_S)
    assert outcome == ("answered", answer_of(tag), answer_of(tag))
    assert_answered(parent["result"], tag)


# -- 2. new event loops --------------------------------------------------------------


def test_every_new_event_loop_answers(keep_alive_simulator: OpenAISimulator) -> None:
    tag = "loops"
    llm = team(keep_alive_simulator, tag, proposer_timeout=20)
    for _ in range(3):
        assert_answered(asyncio.run(llm.ainvoke(Q)), tag)
    for _ in range(2):
        assert asyncio.run(astreamed(llm)) == answer_of(tag)


@pytest.mark.parametrize("aggregation", ["synthesize", "staircase"])
def test_sync_and_async_calls_take_turns(
    keep_alive_simulator: OpenAISimulator, aggregation: str
) -> None:
    tag = f"turns-{aggregation}"
    llm = team(keep_alive_simulator, tag, aggregation=aggregation, proposer_timeout=20)
    results = [
        llm.invoke(Q),
        asyncio.run(llm.ainvoke(Q)),
        llm.invoke(Q),
        asyncio.run(llm.ainvoke(Q)),
    ]
    texts = [streamed(llm), asyncio.run(astreamed(llm)), streamed(llm), asyncio.run(astreamed(llm))]
    for result in results:
        errors = [p["error"] for layer in result.response_metadata["proposals"] for p in layer]
        assert errors == [None, None], errors
        assert result.response_metadata["degraded"] is False
    first = results[0].content
    assert first
    assert [r.content for r in results] == [first] * 4
    assert texts == [first] * 4


def test_structured_output_and_tools_on_a_second_loop(
    keep_alive_simulator: OpenAISimulator,
) -> None:
    tag = "constrained"
    llm = team(keep_alive_simulator, tag)
    assert_answered(asyncio.run(llm.ainvoke(Q)), tag)
    structured = llm.with_structured_output(Joke, method="json_schema", include_raw=True)
    out = asyncio.run(structured.ainvoke(Q))
    assert out["parsed"] == Joke(setup="simulated setup", punchline="simulated punchline")
    assert not out["raw"].response_metadata["degraded"]
    tools = llm.bind_tools([magic_function], tool_choice="magic_function")
    called = asyncio.run(tools.ainvoke("What is magic_function(3)?"))
    assert isinstance(called, AIMessage)
    assert called.tool_calls[0]["args"] == {"input": 3}
    assert not called.response_metadata["degraded"]


def test_the_fallback_aggregator_answers_on_every_loop(
    keep_alive_simulator: OpenAISimulator,
) -> None:
    tag = "loops-fb"
    keep_alive_simulator.set_behavior(name(tag, "agg"), ModelBehavior(error_status=500))
    llm = team(keep_alive_simulator, tag, fallback=True)
    results = [asyncio.run(llm.ainvoke(Q)) for _ in range(3)]
    results.append(llm.invoke(Q))
    for result in results:
        assert_answered(result, tag, "fb")
        cause = result.response_metadata["aggregator"]["fallback_from"]
        assert cause.startswith(f"{name(tag, 'agg')}: OpenAIAPIError: Error code: 500"), cause


@pytest.mark.parametrize(
    "make_copy",
    [copy.copy, lambda llm: llm.model_copy()],
    ids=["copy", "model_copy"],
)
def test_a_copy_answers_on_a_new_loop(
    keep_alive_simulator: OpenAISimulator, make_copy: Any
) -> None:
    tag = "copies"
    llm = team(keep_alive_simulator, tag)
    assert_answered(asyncio.run(llm.ainvoke(Q)), tag)
    copied = make_copy(llm)
    assert_answered(asyncio.run(copied.ainvoke(Q)), tag)
    assert_answered(copied.invoke(Q), tag)
    assert_answered(asyncio.run(llm.ainvoke(Q)), tag)


def open_sockets() -> int:
    """Sockets this process has open (the simulator's ends included)."""
    sockets = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            sockets += os.readlink(fd).startswith("socket:")
        except FileNotFoundError:  # closed meanwhile (by the simulator's thread)
            continue
    return sockets


def closed_loops_with_a_client() -> int:
    return sum(1 for loop in list(loop_clients_module._CLIENTS) if loop.is_closed())


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts sockets in /proc")
def test_fifty_event_loops_leave_no_client_or_connection_behind(
    keep_alive_simulator: OpenAISimulator,
) -> None:
    tag = "many-loops"
    llm = team(keep_alive_simulator, tag)
    for _ in range(5):
        assert_answered(asyncio.run(llm.ainvoke(Q)), tag)
    before = open_sockets()
    for _ in range(50):
        assert_answered(asyncio.run(llm.ainvoke(Q)), tag)
    assert closed_loops_with_a_client() == 0
    # Each loop's connections were closed with it: a few may still be closing.
    assert open_sockets() - before <= 6
    # A loop closed by hand (no shutdown of its async generators): its client
    # cannot be closed, but it is dropped once another loop needs a client,
    # and the garbage collector closes its sockets.
    for _ in range(5):
        loop = asyncio.new_event_loop()
        assert_answered(loop.run_until_complete(llm.ainvoke(Q)), tag)
        loop.close()
    assert_answered(asyncio.run(llm.ainvoke(Q)), tag)
    assert closed_loops_with_a_client() == 0
    gc.collect()
    assert open_sockets() - before <= 6


# -- 3. Ctrl-C in a batch ----------------------------------------------------------------

INTERRUPTED_BATCH = textwrap.dedent(
    """
    import sys
    from langchain_openai import ChatOpenAI
    from langchain_moa import MoAChatModel

    base_url, way, hung0, hung1, aggregator = sys.argv[1:]

    def chat(model):
        return ChatOpenAI(base_url=base_url, api_key="sim", model=model, max_retries=0)

    llm = MoAChatModel(
        proposers=[chat(hung0), chat(hung1)], aggregator=chat(aggregator), layers=2,
        proposer_timeout=120,
    )
    questions = ["q1", "q2", "q3", "q4"]
    try:
        if way == "batch":
            llm.batch(questions)
        else:
            for _ in llm.batch_as_completed(questions):
                pass
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        sys.stdin.readline()  # the parent checks the requests, then lets it go on
        raise
    print("RETURNED", flush=True)
    """
)


def read_line(child: subprocess.Popen[str], within: float) -> str:
    """The child's next line of output, or ``""`` if none came within ``within`` seconds."""
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], within)
    return child.stdout.readline() if ready else ""


@pytest.mark.skipif(os.name == "nt", reason="uses SIGINT")
@pytest.mark.parametrize("way", ["batch", "batch_as_completed"])
def test_ctrl_c_ends_a_batch_and_closes_its_requests(
    openai_simulator: OpenAISimulator, tmp_path: Path, way: str
) -> None:
    tag = f"sigint-{way}"
    hung = [name(tag, "p0"), name(tag, "p1")]
    for model in hung:
        openai_simulator.set_behavior(model, ModelBehavior(hang=True))
    script = tmp_path / "interrupted_batch.py"
    script.write_text(INTERRUPTED_BATCH, encoding="utf-8")
    # The child imports this very package (worktree under test first).
    root = str(Path(langchain_moa.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, str(script), openai_simulator.base_url, way, *hung, name(tag, "agg")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )

    def hung_requests() -> int:
        return sum(len(openai_simulator.requests_for(model)) for model in hung)

    try:
        # Importing openai takes seconds: wait for all eight hung requests.
        deadline = time.monotonic() + HANG_BOUND_S
        while hung_requests() < 8 or openai_simulator.in_flight < 8:
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, f"{hung_requests()} of 8 requests arrived"
            time.sleep(0.02)
        child.send_signal(signal.SIGINT)
        interrupted = time.perf_counter()
        line = read_line(child, within=10)
        assert line == "INTERRUPTED\n", "Ctrl-C did not end the batch within 10s"
        assert time.perf_counter() - interrupted < 10
        # The requests were closed by the batch, not by the end of the process.
        while openai_simulator.in_flight:
            assert child.poll() is None
            assert time.perf_counter() - interrupted < 10, "the batch's requests stayed open"
            time.sleep(0.02)
        assert child.stdin is not None
        child.stdin.write("\n")
        child.stdin.flush()
        _, err = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert "KeyboardInterrupt" in err, err[-2000:]
    assert child.returncode in (-signal.SIGINT, 1, 130), child.returncode
    assert hung_requests() == 8  # no call started after Ctrl-C
