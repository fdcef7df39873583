"""Instruction sets: AlpacaEval JSON and MT-Bench question JSONL, read as jobs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Format = Literal["alpaca_eval", "mt_bench"]
FORMATS: tuple[Format, ...] = ("alpaca_eval", "mt_bench")
"""The instruction-set formats ``moa-generate`` reads and writes."""

DEFAULT_CONCURRENCY = 4
"""Items answered at once (one ensemble call each at a time), by default."""

ERRORS_SUFFIX = ".errors.log"
"""Appended to the output path to name the file that lists failed items.

Its lines are JSON, but the name ends in neither ``.jsonl`` nor ``.json``:
FastChat takes every ``model_answer/*.jsonl`` file for a model's answers, and
AlpacaEval reads ``.json`` files as model outputs.
"""

LEGACY_ERRORS_SUFFIX = ".errors.jsonl"
"""The errors file's former suffix; such a file is removed when a run starts."""


class InstructionSetError(ValueError):
    """An instruction set or an output file that cannot be read."""


class EmptyAnswerError(RuntimeError):
    """The ensemble answered with an empty text."""


# -- the instruction sets -------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One item of an instruction set, to be answered turn by turn.

    Attributes:
        key: The item's identity within the set (used to resume): the
            ``question_id`` of an MT-Bench question, the position of an
            AlpacaEval item (instructions may repeat).
        ident: The fields that name the item in the errors file.
        turns: The user turns, asked in order; later turns see the earlier
            final answers.
        item: The item as read from the instruction set.
    """

    key: str
    ident: Mapping[str, Any]
    turns: tuple[str, ...]
    item: Mapping[str, Any]


def detect_format(path: Path) -> Format:
    """Tell an AlpacaEval JSON list from an MT-Bench question JSONL file.

    Args:
        path: The instruction set.

    Returns:
        ``"alpaca_eval"`` for a JSON list, ``"mt_bench"`` for JSON lines whose
        first object has ``turns``.

    Raises:
        InstructionSetError: If the content matches neither format.
    """
    text = _read_text(path).lstrip()
    if text.startswith("["):
        return "alpaca_eval"
    first = text.split("\n", 1)[0]
    try:
        head = json.loads(first) if first.startswith("{") else None
    except json.JSONDecodeError:
        head = None
    if isinstance(head, dict) and "turns" in head:
        return "mt_bench"
    msg = (
        f"cannot tell the format of {path}: expected an AlpacaEval JSON list or "
        "MT-Bench question JSONL; pass --format"
    )
    raise InstructionSetError(msg)


def load_jobs(path: Path, fmt: Format) -> list[Job]:
    """Read an instruction set as jobs.

    Args:
        path: The instruction set.
        fmt: Its format.

    Returns:
        One job per item, in file order.

    Raises:
        InstructionSetError: If an item lacks a required field.
    """
    if fmt == "alpaca_eval":
        return _alpaca_jobs(read_json_list(path))
    return [_mt_bench_job(path, number, item) for number, item in read_jsonl(path, strict=True)]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        msg = f"cannot read {path}: {error.strerror or error}"
        raise InstructionSetError(msg) from error


def read_json_list(path: Path) -> list[dict[str, Any]]:
    """Read a JSON file that must hold a list of objects."""
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        msg = f"{path} is not valid JSON: {error}"
        raise InstructionSetError(msg) from error
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        msg = f"{path} must hold a JSON list of objects"
        raise InstructionSetError(msg)
    return data


def read_jsonl(path: Path, *, strict: bool) -> list[tuple[int, dict[str, Any]]]:
    """Read JSON lines as ``(line number, object)``; non-strict skips bad lines."""
    records = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if strict:
                msg = f"{path}, line {number}: not valid JSON: {error}"
                raise InstructionSetError(msg) from error
            continue
        if isinstance(record, dict):
            records.append((number, record))
        elif strict:
            msg = f"{path}, line {number}: expected a JSON object"
            raise InstructionSetError(msg)
    return records


def _alpaca_jobs(items: list[dict[str, Any]]) -> list[Job]:
    for index, item in enumerate(items):
        if not isinstance(item.get("instruction"), str) or not item["instruction"].strip():
            msg = f"AlpacaEval item {index} has no 'instruction' text"
            raise InstructionSetError(msg)
    return [
        Job(key=f"#{index}", ident=_alpaca_ident(item), turns=(item["instruction"],), item=item)
        for index, item in enumerate(items)
    ]


def _alpaca_ident(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: item[k] for k in ("instruction", "dataset") if k in item}


def _mt_bench_job(path: Path, number: int, item: dict[str, Any]) -> Job:
    turns = item.get("turns")
    if "question_id" not in item:
        msg = f"{path}, line {number}: no 'question_id'"
        raise InstructionSetError(msg)
    if (
        not isinstance(turns, list)
        or not 1 <= len(turns) <= 2
        or not all(isinstance(turn, str) and turn.strip() for turn in turns)
    ):
        msg = f"{path}, line {number}: 'turns' must be a list of 1 or 2 user turns"
        raise InstructionSetError(msg)
    return Job(
        key=str(item["question_id"]),
        ident={"question_id": item["question_id"]},
        turns=tuple(turns),
        item=item,
    )
