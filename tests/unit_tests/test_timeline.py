"""The timeline's Gantt chart, drawn from a hand-made ``response_metadata``."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from rich.console import Console

from langchain_moa.timeline import (
    BAR_WIDTH,
    Span,
    bar,
    bar_width_for,
    critical_path,
    outcome,
    render_timeline,
    spans,
)

CUT = "LayerDeadlineError: cut at the layer deadline (0.4s), quorum met"
TIMEOUT = "ProposerTimeoutError: no answer within 0.2s"
FAILED = "OpenAIAPIError: Error code: 500 - simulated error"


def record(
    layer: int,
    index: int,
    model: str,
    started: float | None,
    finished: float | None,
    error: str | None = None,
    first_token: float | None = None,
) -> dict[str, Any]:
    return {
        "layer": layer,
        "index": index,
        "model": model,
        "text": None if error else f"{model} answers",
        "usage": None,
        "latency_s": None if started is None else round(finished - started, 4),
        "error": error,
        "attempts": 1,
        "fallback_from": None,
        "started_s": started,
        "finished_s": finished,
        "first_token_s": first_token,
    }


# Layer 1: b is the slowest that answered; c failed later still (not critical).
# Layer 2: a answered; b was cut at the deadline; c timed out.
METADATA: dict[str, Any] = {
    "model_name": "mixture-of-agents",
    "proposals": [
        [
            record(1, 0, "a", 0.0, 0.3),
            record(1, 1, "b", 0.0, 0.6),
            record(1, 2, "c", 0.0, 0.7, FAILED),
        ],
        [
            record(2, 0, "a", 0.7, 0.9),
            record(2, 1, "b", 0.7, 1.1, CUT),
            record(2, 2, "c", 0.7, 0.9, TIMEOUT),
        ],
    ],
    "aggregator": record(3, 0, "agg", 1.1, 1.6, first_token=1.2),
    "failed_proposers": 3,
    "degraded": True,
}


def text_of(renderable: Any, width: int = 140) -> str:
    console = Console(width=width, record=True, no_color=True)
    console.print(renderable)
    return console.export_text()


def row(text: str, call: str, model: str) -> str:
    return next(line for line in text.splitlines() if f" {call} " in line and f" {model} " in line)


def test_spans_read_every_record_in_layer_order() -> None:
    found = spans(METADATA)
    assert [(s.layer, s.index, s.aggregator) for s in found] == [
        (1, 0, False),
        (1, 1, False),
        (1, 2, False),
        (2, 0, False),
        (2, 1, False),
        (2, 2, False),
        (3, 0, True),
    ]
    assert found[-1].first_token_s == 1.2


def test_the_critical_path_is_the_slowest_success_of_each_layer_then_the_aggregator() -> None:
    path = critical_path(spans(METADATA))
    assert [(s.layer, s.model) for s in path] == [(1, "b"), (2, "a"), (3, "agg")]


def test_failures_are_told_apart() -> None:
    found = spans(METADATA)
    path = critical_path(found)
    assert [outcome(s, path) for s in found] == [
        "answered",
        "critical",
        "failed",
        "critical",
        "cut",
        "timed out",
        "critical",
    ]


def test_a_bar_runs_from_start_to_end_on_the_shared_axis() -> None:
    span = Span(1, 0, "a", aggregator=False, started_s=0.25, finished_s=0.5)
    assert bar(span, "answered", total=1.0, width=20).plain == " " * 5 + "▓" * 5 + " " * 10
    whole = Span(1, 0, "a", aggregator=False, started_s=0.0, finished_s=1.0)
    assert bar(whole, "critical", total=1.0, width=8).plain == "█" * 8


def test_a_call_too_short_to_see_still_gets_one_character() -> None:
    span = Span(1, 0, "a", aggregator=False, started_s=0.5, finished_s=0.5001)
    assert bar(span, "failed", total=1.0, width=10).plain == " " * 5 + "✗" + " " * 4


def test_the_first_token_is_marked_on_the_aggregator_bar() -> None:
    span = Span(3, 0, "agg", aggregator=True, started_s=0.5, finished_s=1.0, first_token_s=0.75)
    assert bar(span, "critical", total=1.0, width=8).plain == "    ██│█"


def test_an_untimed_record_has_an_empty_bar() -> None:
    span = Span(1, 0, "a", aggregator=False, started_s=None, finished_s=None)
    assert bar(span, "answered", total=1.0, width=6).plain == " " * 6


def test_the_chart_has_a_row_per_call_and_marks_what_matters() -> None:
    text = text_of(render_timeline(METADATA, width=32))
    assert "Timeline (seconds from the run's start)" in text
    assert "0s" in text
    assert "1.60s" in text  # the axis ends with the last call
    assert "critical path" in row(text, "p1", "b")
    assert "critical path" not in row(text, "p0", "a")
    assert "failed (OpenAIAPIError)" in row(text, "p2", "c")
    assert "✗" in row(text, "p2", "c")
    assert "cut at the layer deadline" in text
    assert "░" in text
    assert "timed out" in text
    assert "▒" in text
    aggregator = row(text, "agg", "agg")
    assert "1.10-1.60" in aggregator
    assert "│" in aggregator
    assert "first token 1.20s" in text
    assert "█ critical path" in text  # the legend
    # One row per proposer and the aggregator.
    assert len(re.findall(r"^ +\d+ +(?:p\d|agg) ", text, flags=re.MULTILINE)) == 7


def test_the_chart_is_drawn_from_json_metadata_alone() -> None:
    as_json = json.loads(json.dumps(METADATA))
    assert text_of(render_timeline(as_json)) == text_of(render_timeline(METADATA))


def test_records_without_offsets_give_a_note_not_a_chart() -> None:
    old = {"proposals": [[{"layer": 1, "index": 0, "model": "a", "error": None}]]}
    assert "No timeline" in text_of(render_timeline(old))
    assert "No timeline" in text_of(render_timeline({}))


@pytest.mark.parametrize(("console", "expected"), [(80, 16), (100, 36), (200, BAR_WIDTH)])
def test_the_axis_shrinks_to_fit_the_console(console: int, expected: int) -> None:
    assert bar_width_for(console) == expected


def test_the_chart_fits_an_80_column_console() -> None:
    text = text_of(render_timeline(METADATA, width=bar_width_for(80)), width=80)
    assert "critical path" in text
    assert "first token 1.20s" in text
