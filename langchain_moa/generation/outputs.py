"""Output files the evaluators consume, written incrementally so runs can resume."""

from __future__ import annotations

import json
import os
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from langchain_moa.errors import describe_error
from langchain_moa.generation.instructions import (
    Format,
    Job,
    occurrence_keys,
    read_json_list,
    read_jsonl,
)


def _atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


def _append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line and push it to disk."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class OutputStore(ABC):
    """Where finished answers go, and which items are already answered.

    Args:
        path: The output file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._done: dict[str, dict[str, Any]] = {}
        self._other: list[dict[str, Any]] = []

    def pending(self, jobs: Sequence[Job]) -> list[Job]:
        """The jobs without a complete answer in the output file.

        Args:
            jobs: The jobs of this run.

        Returns:
            Those still to answer.
        """
        return [job for job in jobs if job.key not in self._done]

    @abstractmethod
    def save(self, job: Job, answers: list[str]) -> None:
        """Write the answers of one finished job."""

    @abstractmethod
    def close(self) -> None:
        """Finish the file once the run is over."""


class AlpacaEvalStore(OutputStore):
    """AlpacaEval model outputs: a JSON list, replaced atomically after every item.

    The file lists the finished items in instruction-set order: each input
    object with ``output`` and ``generator`` set. Items with a non-empty
    ``output`` already in the file are kept as they are and skipped.

    Args:
        path: The output file (read if it exists).
        jobs: The whole instruction set.
        generator: The ``generator`` name written with every new output.
    """

    def __init__(self, path: Path, jobs: Sequence[Job], generator: str) -> None:
        super().__init__(path)
        self._order = [job.key for job in jobs]
        self._generator = generator
        if path.exists():
            self._load()

    def _load(self) -> None:
        """Keep the finished outputs; records of other instructions stay untouched."""
        records = read_json_list(self.path)
        keys = occurrence_keys([str(record.get("instruction", "")) for record in records])
        known = set(self._order)
        for key, record in zip(keys, records, strict=True):
            if key not in known:
                self._other.append(record)
            elif isinstance(record.get("output"), str) and record["output"].strip():
                self._done[key] = record

    def save(self, job: Job, answers: list[str]) -> None:
        """Record one output and rewrite the file atomically.

        Args:
            job: The answered job.
            answers: Its one answer.
        """
        self._done[job.key] = {**job.item, "output": answers[0], "generator": self._generator}
        records = [self._done[key] for key in self._order if key in self._done]
        records += self._other
        _atomic_write_text(self.path, json.dumps(records, ensure_ascii=False, indent=2) + "\n")

    def close(self) -> None:
        """Nothing to do: the file is complete after every item."""


class MTBenchStore(OutputStore):
    """MT-Bench answers: JSON lines, one appended per finished question.

    On opening, the complete answers already in the file are kept (one per
    ``question_id``); incomplete or unreadable lines, such as a line cut by an
    interruption, are dropped by rewriting the file atomically. ``close``
    puts the answers in question order, as FastChat does.

    Args:
        path: The answer file (read if it exists).
        jobs: The whole instruction set.
        model_id: The ``model_id`` written with every new answer.
    """

    def __init__(self, path: Path, jobs: Sequence[Job], model_id: str) -> None:
        super().__init__(path)
        self._model_id = model_id
        self._turns = {job.key: len(job.turns) for job in jobs}
        if path.exists():
            self._load()
            self._write()

    def _load(self) -> None:
        """Keep one complete answer per question; other sets' answers stay."""
        for _, record in read_jsonl(self.path, strict=False):
            key = str(record.get("question_id"))
            if key not in self._turns:
                self._other.append(record)
            elif key not in self._done and _complete_answer(record, self._turns[key]):
                self._done[key] = record

    def _write(self) -> None:
        records = [self._done[key] for key in self._turns if key in self._done]
        records += self._other
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        _atomic_write_text(self.path, text)

    def save(self, job: Job, answers: list[str]) -> None:
        """Append the answer of one question.

        Args:
            job: The answered question.
            answers: One final answer per turn.
        """
        record = {
            "question_id": job.item["question_id"],
            "answer_id": uuid.uuid4().hex,
            "model_id": self._model_id,
            "choices": [{"index": 0, "turns": answers}],
            "tstamp": time.time(),
        }
        _append_jsonl(self.path, record)
        self._done[job.key] = record

    def close(self) -> None:
        """Rewrite the file in question order."""
        if self._done or self._other:
            self._write()


def _complete_answer(record: Mapping[str, Any], turns: int) -> bool:
    """Whether an MT-Bench answer record has a non-empty answer for every turn."""
    choices = record.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return False
    answers = choices[0].get("turns")
    return (
        isinstance(answers, list)
        and len(answers) == turns
        and all(isinstance(a, str) and a.strip() for a in answers)
    )


class ErrorLog:
    """``<output>.errors.jsonl``: the items that failed in this run, with the error.

    The file is emptied when a run starts (failed items are retried) and
    removed at the end if nothing failed.

    Args:
        path: The errors file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        path.unlink(missing_ok=True)

    def add(self, job: Job, error: BaseException) -> None:
        """Record one failed item; key-like strings in the error are masked.

        Args:
            job: The item.
            error: Why it failed.
        """
        self.count += 1
        record = {**job.ident, "error": describe_error(error), "tstamp": time.time()}
        _append_jsonl(self.path, record)

    def close(self) -> None:
        """Remove the file if no item failed."""
        if not self.count:
            self.path.unlink(missing_ok=True)


def open_store(fmt: Format, path: Path, jobs: Sequence[Job], generator: str) -> OutputStore:
    """Open the output file of a format.

    Args:
        fmt: The instruction-set format.
        path: The output file.
        jobs: The whole instruction set.
        generator: The generator name (AlpacaEval) or model id (MT-Bench).

    Returns:
        The store.
    """
    if fmt == "alpaca_eval":
        return AlpacaEvalStore(path, jobs, generator)
    return MTBenchStore(path, jobs, generator)
