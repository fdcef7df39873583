"""MoA over real HTTP: ChatOpenAI proposers and aggregator against the simulator."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from langchain_moa import MoAChatModel
from langchain_moa.presets import openai_compatible_moa, together_moa, together_moa_lite
from langchain_moa.testing import ModelBehavior, OpenAISimulator
from langchain_moa.testing.answers import parse_references
from tests.paper_prompt import PAPER_PROMPT
from tests.simulated_usage import counts, simulator_usage


def chat(sim: OpenAISimulator, model: str) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=sim.base_url, api_key="sim-key", model=model, max_retries=0, stream_usage=True
    )


def ensemble(sim: OpenAISimulator, tag: str, layers: int = 3) -> MoAChatModel:
    return MoAChatModel(
        proposers=[chat(sim, f"{tag}-p{i}") for i in range(3)],
        aggregator=chat(sim, f"{tag}-agg"),
        layers=layers,
    )


def aggregator_system_prompt(sim: OpenAISimulator, model: str) -> str:
    (request,) = sim.requests_for(model)
    system = request.body["messages"][0]
    assert system["role"] == "system"
    return system["content"]


def test_invoke_the_aggregator_really_receives_every_proposal(
    openai_simulator: OpenAISimulator,
) -> None:
    result = ensemble(openai_simulator, "inv").invoke("Why is the sky blue?")
    assert result.content == (
        "inv-agg read 3 references [inv-p0, inv-p1, inv-p2] and answers: Why is the sky blue?"
    )
    references = parse_references(aggregator_system_prompt(openai_simulator, "inv-agg"))
    # The aggregator read the second layer's answers, which read the first's.
    assert references == [
        f"inv-p{i} read 3 references [inv-p0, inv-p1, inv-p2] and answers: Why is the sky blue?"
        for i in range(3)
    ]
    assert aggregator_system_prompt(openai_simulator, "inv-agg").startswith(
        PAPER_PROMPT + "\n1. inv-p0 read 3"
    )
    # First layer: the conversation as given, no system message injected.
    first = [r for r in openai_simulator.requests_for("inv-p0")]
    assert len(first) == 2
    assert first[0].body["messages"] == [{"role": "user", "content": "Why is the sky blue?"}]
    usage = result.usage_metadata
    inner = [r for r in openai_simulator.requests if r.model.startswith("inv-")]
    assert len(inner) == 7
    assert counts(usage) == simulator_usage(inner)  # every call, as the simulator counted it
    assert (
        usage["total_tokens"]
        == sum(
            p["usage"]["total_tokens"]
            for layer in result.response_metadata["proposals"]
            for p in layer
        )
        + result.response_metadata["aggregator"]["usage"]["total_tokens"]
    )


async def test_ainvoke_with_the_callers_system_prompt(openai_simulator: OpenAISimulator) -> None:
    llm = ensemble(openai_simulator, "ainv", layers=2)
    result = await llm.ainvoke([SystemMessage("Answer briefly."), HumanMessage("What is MoA?")])
    assert result.content == (
        "ainv-agg read 3 references [ainv-p0, ainv-p1, ainv-p2] and answers: What is MoA?"
    )
    system = aggregator_system_prompt(openai_simulator, "ainv-agg")
    assert system.startswith("Answer briefly.\n\n" + PAPER_PROMPT + "\n1. ")


def test_batch_keeps_each_question_apart(openai_simulator: OpenAISimulator) -> None:
    questions = [f"question {i}" for i in range(4)]
    results = ensemble(openai_simulator, "bat", layers=2).batch(questions)
    for question, result in zip(questions, results, strict=True):
        assert str(result.content).endswith(f"and answers: {question}")


async def test_abatch_keeps_each_question_apart(openai_simulator: OpenAISimulator) -> None:
    questions = [f"async question {i}" for i in range(4)]
    results = await ensemble(openai_simulator, "abat", layers=2).abatch(questions)
    for question, result in zip(questions, results, strict=True):
        assert str(result.content).endswith(f"and answers: {question}")


def test_a_failing_provider_is_reported_not_hidden(openai_simulator: OpenAISimulator) -> None:
    openai_simulator.set_behavior("fail-p1", ModelBehavior(error_status=500))
    result = ensemble(openai_simulator, "fail", layers=2).invoke("q")
    assert result.content == "fail-agg read 2 references [fail-p0, fail-p2] and answers: q"
    failed = result.response_metadata["proposals"][0][1]
    assert failed["model"] == "fail-p1"
    assert "Error code: 500" in failed["error"]
    assert "sim-key" not in failed["error"]
    assert result.response_metadata["degraded"] is True


def test_proposers_run_in_parallel_over_http(openai_simulator: OpenAISimulator) -> None:
    for i in range(3):
        openai_simulator.set_behavior(f"par-p{i}", ModelBehavior(first_token_latency=0.4))
    started = time.perf_counter()
    ensemble(openai_simulator, "par", layers=3).invoke("q")
    # Sequential: 6 x 0.4 = 2.4 s; critical path: 2 x 0.4 = 0.8 s.
    assert time.perf_counter() - started < 1.8


def test_presets_use_the_papers_line_ups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", "tgp_v1_secret-value-123")
    moa, lite = together_moa(), together_moa_lite()
    assert moa.layers == 3
    assert lite.layers == 2
    assert moa.aggregator.model_name == "Qwen/Qwen1.5-110B-Chat"
    assert lite.aggregator.model_name == "Qwen/Qwen1.5-72B-Chat"
    assert len(moa.proposer_layers[0]) == 6
    assert moa.proposer_layers[0][0].temperature == 0.7
    assert "secret-value" not in repr(moa) + str(moa)
    monkeypatch.delenv("TOGETHER_API_KEY")
    with pytest.raises(ValueError, match="TOGETHER_API_KEY"):
        together_moa()


def test_openai_compatible_preset_against_the_simulator(openai_simulator: OpenAISimulator) -> None:
    llm = openai_compatible_moa(
        ["oc-a", "oc-b"], "oc-agg", base_url=openai_simulator.base_url, layers=2
    )
    assert llm.invoke("hi").content == "oc-agg read 2 references [oc-a, oc-b] and answers: hi"
    body = openai_simulator.requests_for("oc-a")[0].body
    assert body["temperature"] == 0.7
    assert body["max_completion_tokens"] == 2048


def test_main_command_answers_through_the_simulator() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"OPENAI_API_KEY", "TOGETHER_API_KEY", "OPENAI_BASE_URL"}
    }
    done = subprocess.run(
        [sys.executable, "-m", "langchain_moa", "--layers", "2", "Why is the sky blue?"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "SIMULATED" in done.stdout
    assert "Qwen/Qwen1.5-72B-Chat read 6 references" in done.stdout
    assert "answers: Why is the sky blue?" in done.stdout
    assert "Tokens:" in done.stdout


def test_main_command_help_documents_the_options() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "langchain_moa", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for option in (
        "--layers",
        "--proposer",
        "--aggregator",
        "--base-url",
        "--temperature",
        "--max-tokens",
    ):
        assert option in done.stdout
