"""Output files the evaluators consume, written incrementally so runs can resume."""

from __future__ import annotations

import json
import os
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from langchain_moa.errors import describe_error
from langchain_moa.generation.instructions import (
    ERRORS_SUFFIX,
    LEGACY_ERRORS_SUFFIX,
    Format,
    Job,
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


LINE_UP_FIELD = "moa_line_up"
"""The record field naming the line-up an answer came from (when it is known)."""

_OUTPUT_FIELDS = frozenset({"output", "generator", LINE_UP_FIELD})
"""AlpacaEval fields that the output sets: not part of an item's identity."""


class MixedGeneratorsError(ValueError):
    """The output file holds answers by another generator than this run's."""


@dataclass(frozen=True)
class Generator:
    """Who writes the answers of a run.

    Attributes:
        name: AlpacaEval ``generator`` / MT-Bench ``model_id``.
        line_up: What the ensemble is (models, layers, sampling settings), in
            words; written with every answer when given.
    """

    name: str
    line_up: str | None = None

    def describe(self) -> str:
        """The name, and the line-up if known, for messages."""
        return f"{self.name!r} ({self.line_up})" if self.line_up else repr(self.name)

    def differs_from(self, other: Generator) -> bool:
        """Whether ``other`` is another generator: another name or, if both known, line-up."""
        if self.name != other.name:
            return True
        return None not in (self.line_up, other.line_up) and self.line_up != other.line_up

    def stamp(self) -> dict[str, str]:
        """The line-up field to add to a record (none if the line-up is unknown)."""
        return {LINE_UP_FIELD: self.line_up} if self.line_up else {}


def _recorded_generator(record: Mapping[str, Any], field: str) -> Generator | None:
    """The generator a record names, or ``None`` if it names none."""
    name = record.get(field)
    if not isinstance(name, str):
        return None
    line_up = record.get(LINE_UP_FIELD)
    return Generator(name, line_up if isinstance(line_up, str) else None)


class OutputStore(ABC):
    """Where finished answers go, and which items are already answered.

    An existing file is read first. Unless ``allow_mixed``, it must hold the
    answers of this run's generator only, so that a resumed run never mixes
    two ensembles in one file.

    Args:
        path: The output file (read if it exists).
        jobs: The whole instruction set.
        generator: Written with every new answer.
        allow_mixed: Add to a file that holds another generator's answers.

    Raises:
        MixedGeneratorsError: If the file holds another generator's answers
            and ``allow_mixed`` is false.
        InstructionSetError: If the file cannot be read.
    """

    generator_field: ClassVar[str]
    """The record field that names the generator."""

    def __init__(
        self,
        path: Path,
        jobs: Sequence[Job],
        generator: Generator,
        *,
        allow_mixed: bool = False,
    ) -> None:
        self.path = path
        self._generator = generator
        self._order = [job.key for job in jobs]
        self._done: dict[str, dict[str, Any]] = {}
        self._other: list[dict[str, Any]] = []
        if path.exists():
            self._load(jobs)
            if not allow_mixed:
                self._check_generator()
            self._write()

    @abstractmethod
    def _load(self, jobs: Sequence[Job]) -> None:
        """Read the finished answers of the existing file."""

    @abstractmethod
    def _write(self) -> None:
        """Replace the file with the kept records, atomically."""

    def _kept(self) -> list[dict[str, Any]]:
        """The records the file keeps: finished answers in set order, then the others."""
        return [self._done[key] for key in self._order if key in self._done] + self._other

    def _check_generator(self) -> None:
        for record in self._kept():
            theirs = _recorded_generator(record, self.generator_field)
            if theirs is not None and theirs.differs_from(self._generator):
                msg = (
                    f"{self.path} holds answers by the generator {theirs.describe()}, but this "
                    f"run's generator is {self._generator.describe()}; resuming would mix "
                    "them in one file. Choose another output file, or pass "
                    "--allow-mixed-generators to add to this one anyway."
                )
                raise MixedGeneratorsError(msg)

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


def _has_output(record: Mapping[str, Any]) -> bool:
    output = record.get("output")
    return isinstance(output, str) and bool(output.strip())


def _same_item(item: Mapping[str, Any], record: Mapping[str, Any]) -> bool:
    """Whether an output record can be the answer to an item: no shared field differs."""
    shared = (item.keys() & record.keys()) - _OUTPUT_FIELDS
    return all(item[field] == record[field] for field in shared)


class _ItemMatcher:
    """Tells which AlpacaEval item an output record answers.

    A record answers the first item not yet matched with the same
    ``instruction`` and no other differing field (``dataset``, ...), so that
    items that share an instruction text keep one answer each.

    Args:
        jobs: The whole instruction set.
    """

    def __init__(self, jobs: Sequence[Job]) -> None:
        self._by_instruction: dict[str, list[Job]] = {}
        for job in jobs:
            self._by_instruction.setdefault(job.item["instruction"], []).append(job)
        self._taken: set[str] = set()

    def _candidates(self, record: Mapping[str, Any]) -> list[Job]:
        instruction = record.get("instruction")
        jobs = self._by_instruction.get(instruction, []) if isinstance(instruction, str) else []
        return [job for job in jobs if _same_item(job.item, record)]

    def knows(self, record: Mapping[str, Any]) -> bool:
        """Whether the record belongs to an item of the set."""
        return bool(self._candidates(record))

    def take(self, record: Mapping[str, Any]) -> Job | None:
        """The item the record answers, now matched, or ``None``."""
        job = next((j for j in self._candidates(record) if j.key not in self._taken), None)
        if job is not None:
            self._taken.add(job.key)
        return job


class AlpacaEvalStore(OutputStore):
    """AlpacaEval model outputs: a JSON list, replaced atomically after every item.

    The file lists the finished items in instruction-set order: each input
    object with ``output`` and ``generator`` (and ``moa_line_up``) set. Items
    with a non-empty ``output`` already in the file are kept as they are and
    skipped; records of other instructions stay; empty or repeated answers to
    the set's items are dropped.
    """

    generator_field = "generator"

    def _load(self, jobs: Sequence[Job]) -> None:
        matcher = _ItemMatcher(jobs)
        for record in read_json_list(self.path):
            job = matcher.take(record) if _has_output(record) else None
            if job is not None:
                self._done[job.key] = record
            elif not matcher.knows(record):
                self._other.append(record)

    def _write(self) -> None:
        text = json.dumps(self._kept(), ensure_ascii=False, indent=2) + "\n"
        _atomic_write_text(self.path, text)

    def save(self, job: Job, answers: list[str]) -> None:
        """Record one output and rewrite the file atomically.

        Args:
            job: The answered job.
            answers: Its one answer.
        """
        self._done[job.key] = {
            **job.item,
            "output": answers[0],
            "generator": self._generator.name,
            **self._generator.stamp(),
        }
        self._write()

    def close(self) -> None:
        """Nothing to do: the file is complete after every item."""


class MTBenchStore(OutputStore):
    """MT-Bench answers: JSON lines, one appended per finished question.

    On opening, the complete answers already in the file are kept (one per
    ``question_id``); incomplete or unreadable lines, such as a line cut by an
    interruption, are dropped by rewriting the file atomically. ``close``
    puts the answers in question order, as FastChat does.
    """

    generator_field = "model_id"

    def _load(self, jobs: Sequence[Job]) -> None:
        """Keep one complete answer per question; other sets' answers stay."""
        turns = {job.key: len(job.turns) for job in jobs}
        for _, record in read_jsonl(self.path, strict=False):
            key = str(record.get("question_id"))
            if key not in turns:
                self._other.append(record)
            elif key not in self._done and _complete_answer(record, turns[key]):
                self._done[key] = record

    def _write(self) -> None:
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in self._kept())
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
            "model_id": self._generator.name,
            "choices": [{"index": 0, "turns": answers}],
            "tstamp": time.time(),
            **self._generator.stamp(),
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
    """``<output>.errors.log``: the items that failed in this run, with the error.

    One JSON object per line. The name ends in neither ``.jsonl`` nor
    ``.json``, so that neither FastChat (``model_answer/*.jsonl``) nor
    AlpacaEval mistakes it for model outputs. The file is emptied when a run
    starts (failed items are retried), a file of the former name
    (``<output>.errors.jsonl``) is removed then too, and the file is removed at
    the end if nothing failed.

    Args:
        output: The output file the errors belong to.
    """

    def __init__(self, output: Path) -> None:
        self.path = output.with_name(output.name + ERRORS_SUFFIX)
        self.count = 0
        self.path.unlink(missing_ok=True)
        output.with_name(output.name + LEGACY_ERRORS_SUFFIX).unlink(missing_ok=True)

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


def open_store(
    fmt: Format,
    path: Path,
    jobs: Sequence[Job],
    generator: Generator,
    *,
    allow_mixed: bool = False,
) -> OutputStore:
    """Open the output file of a format.

    Args:
        fmt: The instruction-set format.
        path: The output file.
        jobs: The whole instruction set.
        generator: Who writes the new answers.
        allow_mixed: Add to a file that holds another generator's answers.

    Returns:
        The store.

    Raises:
        MixedGeneratorsError: If the file holds another generator's answers
            and ``allow_mixed`` is false.
    """
    store = AlpacaEvalStore if fmt == "alpaca_eval" else MTBenchStore
    return store(path, jobs, generator, allow_mixed=allow_mixed)
