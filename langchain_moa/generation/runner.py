"""Answering jobs with bounded concurrency, a progress bar and per-item error records."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import Runnable

from langchain_moa._extras import missing_extra
from langchain_moa.generation.instructions import (
    DEFAULT_CONCURRENCY,
    EmptyAnswerError,
    Format,
    Job,
    detect_format,
    load_jobs,
)
from langchain_moa.generation.outputs import ErrorLog, Generator, OutputStore, open_store
from langchain_moa.report import Spend

try:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
except ImportError as _missing:  # pragma: no cover - depends on the install
    raise missing_extra("cli", _missing) from _missing


def _answer_text(reply: Any) -> str:
    return reply.text if isinstance(reply, BaseMessage) else str(reply)


async def answer_turns(
    llm: Runnable[Any, Any], turns: Sequence[str], spend: Spend | None = None
) -> list[str]:
    """Ask the user turns in order, each with the conversation so far.

    Args:
        llm: The ensemble (any chat model or runnable taking messages).
        turns: The user turns.
        spend: Where the answers' tokens and dollars are added up, if anywhere.

    Returns:
        One final answer per turn.

    Raises:
        EmptyAnswerError: If an answer is empty.
    """
    messages: list[BaseMessage] = []
    answers: list[str] = []
    for turn in turns:
        messages.append(HumanMessage(turn))
        reply = await llm.ainvoke(messages)
        if spend is not None:
            spend.add(reply)
        text = _answer_text(reply)
        if not text.strip():
            msg = f"the answer to turn {len(answers) + 1} is empty"
            raise EmptyAnswerError(msg)
        answers.append(text)
        messages.append(AIMessage(text))
    return answers


async def _run_job(
    job: Job, llm: Runnable[Any, Any], store: OutputStore, errors: ErrorLog, spend: Spend
) -> bool:
    """Answer one job and save it, or record why it failed; never raises."""
    try:
        answers = await answer_turns(llm, job.turns, spend)
    except Exception as error:  # one item failing must not end the run
        errors.add(job, error)
        return False
    store.save(job, answers)
    return True


@dataclass(frozen=True)
class GenerationReport:
    """What a generation run did.

    Attributes:
        total: Items in the instruction set (after ``limit``).
        skipped: Items already answered in the output file.
        completed: Items answered in this run.
        failed: Items that failed in this run (listed in ``errors_path``).
        output_path: The output file.
        errors_path: The errors file (present only if ``failed``).
        spend: Tokens and dollars of this run's answers.
    """

    total: int
    skipped: int
    completed: int
    failed: int
    output_path: Path
    errors_path: Path
    spend: Spend = field(default_factory=Spend)

    @property
    def ok(self) -> bool:
        """Whether every item has an answer now."""
        return self.failed == 0


def _progress(console: Console | None, *, show: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=console,
        disable=not show,
    )


async def _run_jobs(
    jobs: Sequence[Job],
    llm: Runnable[Any, Any],
    store: OutputStore,
    errors: ErrorLog,
    *,
    concurrency: int,
    on_done: Callable[[], None],
    spend: Spend,
) -> int:
    """Answer the jobs with ``concurrency`` workers; return how many succeeded.

    The unit of work is a whole job: a worker asks all turns of one item, saves
    it, then takes the next item in order. So at most ``concurrency`` ensemble
    calls are in flight, and an interruption loses at most the unfinished
    turns of ``concurrency`` items.
    """
    queue = iter(jobs)

    async def worker() -> int:
        succeeded = 0
        for job in queue:  # the workers share the iterator: each job is taken once
            succeeded += await _run_job(job, llm, store, errors, spend)
            on_done()
        return succeeded

    workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(jobs)))]
    try:
        return sum(await asyncio.gather(*workers))
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


async def agenerate(
    llm: Runnable[Any, Any],
    input_path: Path,
    output_path: Path,
    *,
    generator_name: str,
    line_up: str | None = None,
    allow_mixed_generators: bool = False,
    fmt: Format | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    limit: int | None = None,
    show_progress: bool = False,
    console: Console | None = None,
) -> GenerationReport:
    """Answer an instruction set and write the evaluator's input file.

    Args:
        llm: The ensemble (or any chat model).
        input_path: The AlpacaEval JSON or MT-Bench question JSONL file.
        output_path: The output file; a partial one is resumed.
        generator_name: AlpacaEval ``generator`` / MT-Bench ``model_id``.
        line_up: What the ensemble is, in words (models, layers, sampling);
            written with every answer as ``moa_line_up`` and compared on
            resume. ``None``: only ``generator_name`` is compared.
        allow_mixed_generators: Resume into an output file that holds answers
            by another generator (name or line-up) instead of refusing.
        fmt: The format; detected from the content when ``None``.
        concurrency: Items in flight at once, each asked one turn at a time
            (so also the ensemble calls in flight at once).
        limit: Answer only the first ``limit`` items.
        show_progress: Whether to show a progress bar.
        console: Where the progress bar goes.

    Returns:
        The counts of the run.

    Raises:
        InstructionSetError: If the input or a partial output cannot be read.
        MixedGeneratorsError: If the output file holds another generator's
            answers and ``allow_mixed_generators`` is false.
        ValueError: If ``concurrency`` is below 1 or ``limit`` below 0.
    """
    if concurrency < 1:
        msg = f"concurrency must be at least 1, got {concurrency}"
        raise ValueError(msg)
    if limit is not None and limit < 0:
        msg = f"limit must be at least 0, got {limit}"
        raise ValueError(msg)
    fmt = fmt or detect_format(input_path)
    every_job = load_jobs(input_path, fmt)
    jobs = every_job[:limit]
    output_path.parent.mkdir(parents=True, exist_ok=True)
    generator = Generator(generator_name, line_up)
    store = open_store(fmt, output_path, every_job, generator, allow_mixed=allow_mixed_generators)
    pending = store.pending(jobs)
    errors = ErrorLog(output_path)
    spend = Spend()
    with _progress(console, show=show_progress) as progress:
        task = progress.add_task(f"{fmt} → {output_path.name}", total=len(pending), failed=0)

        def on_done() -> None:
            progress.update(task, advance=1, failed=errors.count)

        try:
            completed = await _run_jobs(
                pending, llm, store, errors, concurrency=concurrency, on_done=on_done, spend=spend
            )
        finally:
            store.close()
            errors.close()
    return GenerationReport(
        total=len(jobs),
        skipped=len(jobs) - len(pending),
        completed=completed,
        failed=errors.count,
        output_path=output_path,
        errors_path=errors.path,
        spend=spend,
    )
