"""``moa-generate`` end to end against the simulator over HTTP.

Every test uses model names of its own: the session's simulator keeps its
behaviours and recorded requests between tests.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from langchain_moa.generate import main
from langchain_moa.testing import ModelBehavior, OpenAISimulator

INSTRUCTIONS = [
    "Name a primary colour.",
    "What is the capital of France?",
    "Write a limerick about a cat.",
    "Explain recursion in one sentence.",
    "List three prime numbers.",
]

QUESTIONS = [
    {
        "question_id": 81,
        "category": "writing",
        "turns": ["Write a haiku about rain.", "Rewrite it about snow."],
    },
    {
        "question_id": 101,
        "category": "reasoning",
        "turns": ["Who is taller, Ann or Bob?", "And who is shorter?"],
    },
    {
        "question_id": 111,
        "category": "math",
        "turns": ["What is 12 times 12?", "Now divide that by 4."],
    },
]


# -- helpers -------------------------------------------------------------------


def write_alpaca(path: Path, instructions: list[str] = INSTRUCTIONS) -> Path:
    items = [
        {"instruction": text, "output": "", "generator": "gpt4_turbo", "dataset": f"set-{i % 2}"}
        for i, text in enumerate(instructions)
    ]
    path.write_text(json.dumps(items, indent=2), encoding="utf-8")
    return path


def write_mt_bench(path: Path) -> Path:
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS), encoding="utf-8")
    return path


def line_up(sim: OpenAISimulator, tag: str, *, layers: int = 2) -> list[str]:
    """Arguments for two proposers and an aggregator named after ``tag``."""
    return [
        "--base-url",
        sim.base_url,
        "--proposer",
        f"{tag}-p1",
        "--proposer",
        f"{tag}-p2",
        "--aggregator",
        f"{tag}-agg",
        "--layers",
        str(layers),
        "--no-progress",
    ]


def expected(tag: str, question: str) -> str:
    return f"{tag}-agg read 2 references [{tag}-p1, {tag}-p2] and answers: {question}"


def last_user_text(request: Any) -> str:
    users = [m for m in request.body["messages"] if m["role"] == "user"]
    return users[-1]["content"]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def errors_path(output: Path) -> Path:
    return output.with_name(output.name + ".errors.log")


def one_line(text: str) -> str:
    """The text with the console's line wrapping undone."""
    return " ".join(text.split())


# -- formats -------------------------------------------------------------------


def test_alpaca_eval_outputs(
    openai_simulator: OpenAISimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    sim = openai_simulator
    source = write_alpaca(tmp_path / "alpaca_eval.json")
    output = tmp_path / "out" / "model_outputs.json"

    status = main([str(source), "-o", str(output), "--generator-name", "my-moa"])
    assert status == 2  # no preset key: the default line-up needs TOGETHER_API_KEY

    status = main(
        [str(source), "-o", str(output), "--generator-name", "my-moa", *line_up(sim, "ga")]
    )

    assert status == 0
    records = json.loads(output.read_text(encoding="utf-8"))
    assert [r["instruction"] for r in records] == INSTRUCTIONS
    for index, record in enumerate(records):
        assert record["output"] == expected("ga", INSTRUCTIONS[index])
        assert record["generator"] == "my-moa"
        assert record["dataset"] == f"set-{index % 2}"
    assert not errors_path(output).exists()
    # The paper's sampling settings reach every call.
    request = openai_simulator.requests_for("ga-agg")[0].body
    assert request["temperature"] == 0.7
    assert request.get("max_completion_tokens", request.get("max_tokens")) == 2048


def test_mt_bench_answers_carry_the_history(
    openai_simulator: OpenAISimulator, tmp_path: Path
) -> None:
    source = write_mt_bench(tmp_path / "question.jsonl")
    output = tmp_path / "model_answer" / "mt-moa.jsonl"

    args = [str(source), "-o", str(output), "--generator-name", "mt-moa", "--concurrency", "2"]
    status = main([*args, *line_up(openai_simulator, "gm")])

    assert status == 0
    answers = read_jsonl(output)
    assert [a["question_id"] for a in answers] == [81, 101, 111]
    for answer, question in zip(answers, QUESTIONS, strict=True):
        assert answer["model_id"] == "mt-moa"
        assert isinstance(answer["answer_id"], str)
        assert answer["answer_id"]
        assert isinstance(answer["tstamp"], float)
        assert answer["choices"] == [
            {"index": 0, "turns": [expected("gm", turn) for turn in question["turns"]]}
        ]
    # Turn 2 goes to the aggregator as (user 1, final answer 1, user 2).
    second_turns = [
        r for r in openai_simulator.requests_for("gm-agg") if len(r.body["messages"]) > 2
    ]
    assert len(second_turns) == 3
    for request in second_turns:
        chat = [m for m in request.body["messages"] if m["role"] != "system"]
        question = next(q for q in QUESTIONS if q["turns"][1] == chat[-1]["content"])
        first, second = question["turns"]
        assert chat == [
            {"role": "user", "content": first},
            {"role": "assistant", "content": expected("gm", first)},
            {"role": "user", "content": second},
        ]
    # The proposers see the same history.
    proposer_turns = [
        r for r in openai_simulator.requests_for("gm-p1") if len(r.body["messages"]) > 1
    ]
    assert len(proposer_turns) == 3
    assert all(r.body["messages"][1]["role"] == "assistant" for r in proposer_turns)


def test_simulate_and_format_options(tmp_path: Path) -> None:
    source = write_mt_bench(tmp_path / "questions.data")
    output = tmp_path / "simulated.jsonl"

    status = main(
        [str(source), "-o", str(output), "--simulate", "--limit", "1", "--format", "mt_bench"]
    )

    assert status == 0
    (answer,) = read_jsonl(output)
    assert answer["question_id"] == 81
    assert answer["model_id"] == "simulated-together-moa"
    assert answer["choices"][0]["turns"][0].startswith("Qwen/Qwen1.5-110B-Chat read 6 references")

    unknown = tmp_path / "notes.txt"
    unknown.write_text("just text\n", encoding="utf-8")
    assert main([str(unknown), "-o", str(tmp_path / "x.json"), "--simulate"]) == 2


# -- resuming ------------------------------------------------------------------


def test_failed_items_are_recorded_and_retried(
    openai_simulator: OpenAISimulator, tmp_path: Path
) -> None:
    source = write_alpaca(tmp_path / "alpaca_eval.json")
    output = tmp_path / "outputs.json"
    args = [str(source), "-o", str(output), "--concurrency", "1", *line_up(openai_simulator, "gr")]
    # The aggregator's first two calls fail for good (400 is not retried).
    openai_simulator.set_behavior("gr-agg", ModelBehavior(fail_first=2, failure_status=400))

    assert main(args) == 1

    done = json.loads(output.read_text(encoding="utf-8"))
    failed = read_jsonl(errors_path(output))
    assert len(done) == 3
    assert len(failed) == 2
    assert {r["instruction"] for r in done} | {f["instruction"] for f in failed} == set(
        INSTRUCTIONS
    )
    assert all("simulated failure" in f["error"] for f in failed)
    assert all(f["error"].startswith("AggregatorFailedError") for f in failed)
    assert all("dataset" in f for f in failed)
    assert not errors_path(output).name.endswith((".json", ".jsonl"))
    before = len(openai_simulator.requests_for("gr-agg"))
    before_proposer = len(openai_simulator.requests_for("gr-p1"))

    assert main(args) == 0  # the behaviour's two failures are used up

    retried = openai_simulator.requests_for("gr-agg")[before:]
    assert sorted(last_user_text(r) for r in retried) == sorted(f["instruction"] for f in failed)
    assert len(openai_simulator.requests_for("gr-p1")) - before_proposer == 2
    records = json.loads(output.read_text(encoding="utf-8"))
    assert [r["instruction"] for r in records] == INSTRUCTIONS
    assert all(r["output"] == expected("gr", r["instruction"]) for r in records)
    assert not errors_path(output).exists()


def test_resume_keeps_finished_alpaca_outputs(
    openai_simulator: OpenAISimulator, tmp_path: Path
) -> None:
    source = write_alpaca(tmp_path / "alpaca_eval.json")
    output = tmp_path / "outputs.json"
    partial = [
        {"instruction": INSTRUCTIONS[0], "output": "kept 0", "generator": "gk-moa"},
        {"instruction": INSTRUCTIONS[3], "output": "kept 3", "generator": "gk-moa"},
        {"instruction": INSTRUCTIONS[1], "output": "", "generator": "earlier"},  # not an answer
    ]
    output.write_text(json.dumps(partial), encoding="utf-8")
    args = [str(source), "-o", str(output), "--generator-name", "gk-moa"]

    assert main([*args, *line_up(openai_simulator, "gk")]) == 0

    asked = sorted(last_user_text(r) for r in openai_simulator.requests_for("gk-agg"))
    assert asked == sorted([INSTRUCTIONS[1], INSTRUCTIONS[2], INSTRUCTIONS[4]])
    records = json.loads(output.read_text(encoding="utf-8"))
    assert [r["instruction"] for r in records] == INSTRUCTIONS
    assert records[0]["output"] == "kept 0"
    assert records[3]["output"] == "kept 3"
    assert records[1]["output"] == expected("gk", INSTRUCTIONS[1])


def test_resume_mt_bench_after_an_interrupted_write(
    openai_simulator: OpenAISimulator, tmp_path: Path
) -> None:
    source = write_mt_bench(tmp_path / "question.jsonl")
    output = tmp_path / "answers.jsonl"
    finished = {
        "question_id": 101,
        "answer_id": "a1",
        "model_id": "gi-moa",
        "choices": [{"index": 0, "turns": ["one", "two"]}],
        "tstamp": 1.0,
    }
    one_turn_only = {**finished, "question_id": 81, "choices": [{"index": 0, "turns": ["x"]}]}
    output.write_text(
        json.dumps(finished)
        + "\n"
        + json.dumps(one_turn_only)
        + "\n"
        + '{"question_id": 111, "ans',
        encoding="utf-8",
    )

    args = [str(source), "-o", str(output), "--generator-name", "gi-moa"]

    assert main([*args, *line_up(openai_simulator, "gi")]) == 0

    first_turns = {last_user_text(r) for r in openai_simulator.requests_for("gi-agg")}
    assert QUESTIONS[1]["turns"][0] not in first_turns  # question 101 was not asked again
    assert len(openai_simulator.requests_for("gi-agg")) == 4  # two questions, two turns each
    answers = read_jsonl(output)
    assert [a["question_id"] for a in answers] == [81, 101, 111]
    assert answers[1] == finished
    assert answers[0]["choices"][0]["turns"] == [expected("gi", t) for t in QUESTIONS[0]["turns"]]


def test_resume_with_repeated_instructions(
    openai_simulator: OpenAISimulator, tmp_path: Path
) -> None:
    joke = "Tell me a joke."
    items = [
        {"instruction": joke, "output": "", "generator": "ref", "dataset": "set-a"},
        {"instruction": INSTRUCTIONS[0], "output": "", "generator": "ref", "dataset": "set-b"},
        {"instruction": joke, "output": "", "generator": "ref", "dataset": "set-c"},
    ]
    source = tmp_path / "alpaca_eval.json"
    source.write_text(json.dumps(items), encoding="utf-8")
    output = tmp_path / "outputs.json"
    args = [str(source), "-o", str(output), "--concurrency", "1", *line_up(openai_simulator, "gd")]
    # The first item (the first of the two jokes) fails; the second joke is answered.
    openai_simulator.set_behavior("gd-agg", ModelBehavior(fail_first=1, failure_status=400))

    assert main(args) == 1

    assert [r["dataset"] for r in json.loads(output.read_text(encoding="utf-8"))] == [
        "set-b",
        "set-c",
    ]
    before = len(openai_simulator.requests_for("gd-agg"))

    assert main(args) == 0

    assert len(openai_simulator.requests_for("gd-agg")) - before == 1  # only the failed joke
    records = json.loads(output.read_text(encoding="utf-8"))
    assert [r["dataset"] for r in records] == ["set-a", "set-b", "set-c"]
    assert [r["output"] for r in records] == [expected("gd", item["instruction"]) for item in items]


def mt_bench_questions(count: int) -> list[dict[str, Any]]:
    return [
        {
            "question_id": number,
            "category": "writing",
            "turns": [f"Question {number}, first turn?", f"Question {number}, second turn?"],
        }
        for number in range(1, count + 1)
    ]


def test_interrupted_mt_bench_run_keeps_finished_questions(
    openai_simulator: OpenAISimulator, tmp_path: Path
) -> None:
    questions = mt_bench_questions(8)
    source = tmp_path / "question.jsonl"
    source.write_text("".join(json.dumps(q) + "\n" for q in questions), encoding="utf-8")
    output = tmp_path / "model_answer" / "gx-moa.jsonl"
    args = [str(source), "-o", str(output), "--concurrency", "2", "--generator-name", "gx-moa"]
    args += line_up(openai_simulator, "gx")
    # Slow enough that the run cannot finish before the signal on a loaded machine:
    # after the 8th call, 8 more take at least 2 s.
    openai_simulator.set_behavior("gx-agg", ModelBehavior(first_token_latency=0.5))
    run = subprocess.Popen(  # Ctrl-C is a SIGINT to the command
        [sys.executable, "-m", "langchain_moa.generate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        # Half the calls made: with two workers, at least two questions are finished.
        while len(openai_simulator.requests_for("gx-agg")) < 8 and run.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()

    assert run.returncode == 130, stderr.decode()
    asked = len(openai_simulator.requests_for("gx-agg"))
    written = read_jsonl(output) if output.exists() else []
    # Every written question is whole; at most one question per worker was lost.
    assert len(written) >= 2
    assert 2 * len(written) <= asked <= 2 * len(written) + 2 * 2
    by_id = {q["question_id"]: q for q in questions}
    for answer in written:
        turns = by_id[answer["question_id"]]["turns"]
        assert answer["choices"][0]["turns"] == [expected("gx", turn) for turn in turns]

    assert main(args) == 0

    resumed = openai_simulator.requests_for("gx-agg")[asked:]
    assert len(resumed) == 2 * (len(questions) - len(written))
    done_turns = {turn for answer in written for turn in by_id[answer["question_id"]]["turns"]}
    assert not done_turns & {last_user_text(r) for r in resumed}  # no finished question again
    answers = read_jsonl(output)
    assert [a["question_id"] for a in answers] == list(by_id)
    for answer in answers:
        turns = by_id[answer["question_id"]]["turns"]
        assert answer["choices"][0]["turns"] == [expected("gx", turn) for turn in turns]
        assert answer["model_id"] == "gx-moa"


def test_errors_file_is_never_taken_for_answers(
    openai_simulator: OpenAISimulator, tmp_path: Path
) -> None:
    source = write_mt_bench(tmp_path / "question.jsonl")
    answer_dir = tmp_path / "model_answer"
    answer_dir.mkdir()
    output = answer_dir / "ge-moa.jsonl"
    legacy = answer_dir / "ge-moa.jsonl.errors.jsonl"  # left by an earlier version
    legacy.write_text('{"question_id": 81, "error": "old"}\n', encoding="utf-8")
    args = [str(source), "-o", str(output), "--concurrency", "1", *line_up(openai_simulator, "ge")]
    openai_simulator.set_behavior("ge-agg", ModelBehavior(fail_first=1, failure_status=400))

    assert main(args) == 1

    # FastChat reads every model_answer/*.jsonl as a model's answers; AlpacaEval reads .json.
    assert sorted(path.name for path in answer_dir.glob("*.jsonl")) == ["ge-moa.jsonl"]
    assert not list(answer_dir.glob("*.json"))
    (failed,) = read_jsonl(errors_path(output))
    assert failed["question_id"] == 81
    assert [a["question_id"] for a in read_jsonl(output)] == [101, 111]

    assert main(args) == 0

    assert sorted(path.name for path in answer_dir.iterdir()) == ["ge-moa.jsonl"]


@pytest.mark.parametrize("fmt", ["alpaca_eval", "mt_bench"])
def test_resume_refuses_another_generator(
    openai_simulator: OpenAISimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fmt: str,
) -> None:
    tag = "gg" if fmt == "alpaca_eval" else "gq"
    other = f"{tag}x"
    if fmt == "alpaca_eval":
        source = write_alpaca(tmp_path / "alpaca_eval.json", INSTRUCTIONS[:3])
        output = tmp_path / "outputs.json"
    else:
        source = write_mt_bench(tmp_path / "question.jsonl")
        output = tmp_path / "answers.jsonl"
    args = [str(source), "-o", str(output)]

    assert main([*args, "--limit", "1", *line_up(openai_simulator, tag)]) == 0

    written = output.read_text(encoding="utf-8")
    field = "generator" if fmt == "alpaca_eval" else "model_id"
    (first,) = read_jsonl(output) if fmt == "mt_bench" else json.loads(written)
    assert first[field] == f"moa-2l-{tag}-agg"
    line_up_text = f"{tag}-p1, {tag}-p2 -> {tag}-agg, 2 layers, temperature 0.7, max_tokens 2048"
    assert first["moa_line_up"] == line_up_text
    capsys.readouterr()

    # Another line-up, another default name: refused, nothing asked, the file as it was.
    assert main([*args, *line_up(openai_simulator, other)]) == 2

    error = one_line(capsys.readouterr().err)
    assert f"moa-2l-{tag}-agg" in error
    assert f"moa-2l-{other}-agg" in error
    assert "--allow-mixed-generators" in error
    assert not openai_simulator.requests_for(f"{other}-agg")
    assert output.read_text(encoding="utf-8") == written

    # The same name given to another line-up: refused too, naming both line-ups.
    named = [*args, "--generator-name", f"moa-2l-{tag}-agg", *line_up(openai_simulator, other)]
    assert main(named) == 2

    error = one_line(capsys.readouterr().err)
    assert line_up_text in error
    assert f"{other}-p1, {other}-p2 -> {other}-agg" in error
    assert output.read_text(encoding="utf-8") == written

    # Asked for explicitly, the run adds the other line-up's answers.
    assert main([*named, "--allow-mixed-generators"]) == 0

    records = read_jsonl(output) if fmt == "mt_bench" else json.loads(output.read_text("utf-8"))
    assert records[0] == first
    assert len(records) == 3
    assert all(r["moa_line_up"].startswith(f"{other}-p1") for r in records[1:])


# -- limits and secrets --------------------------------------------------------


def test_concurrency_is_bounded(openai_simulator: OpenAISimulator, tmp_path: Path) -> None:
    source = write_alpaca(tmp_path / "alpaca_eval.json")
    for name in ("gc-p1", "gc-p2"):
        openai_simulator.set_behavior(name, ModelBehavior(first_token_latency=0.1))
    openai_simulator.reset_peak_in_flight()

    args = [str(source), "-o", str(tmp_path / "o.json"), "--concurrency", "2"]
    assert main([*args, *line_up(openai_simulator, "gc")]) == 0

    # Two ensemble calls at once, each with two proposers in flight.
    assert 2 < openai_simulator.peak_in_flight <= 4


def test_errors_never_show_the_api_key(
    openai_simulator: OpenAISimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = "sk-generate-secret-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("TOGETHER_API_KEY", secret)
    openai_simulator.set_behavior("gs-agg", ModelBehavior(error_status=401))
    source = write_alpaca(tmp_path / "alpaca_eval.json", INSTRUCTIONS[:2])
    output = tmp_path / "o.json"

    assert main([str(source), "-o", str(output), *line_up(openai_simulator, "gs")]) == 1

    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    assert secret not in errors_path(output).read_text(encoding="utf-8")
    assert len(read_jsonl(errors_path(output))) == 2
