"""The run's timeline as a text Gantt chart: one bar per inner call on a shared time axis.

:func:`render_timeline` turns an answer's ``response_metadata`` (its
``proposals`` and ``aggregator`` records, with ``started_s``/``finished_s``
offsets from the run's start) into a ``rich`` renderable. It reads nothing else
and calls nothing: the ``moa`` command prints it after the answer, and a
notebook can print it with ``rich.print``.

Rows are grouped by layer. The critical path (the slowest successful proposer
of each layer, then the aggregator) is drawn in full blocks; failures (``✗``), cut
stragglers and timeouts (``░``, ``▒``) have bars of their own; ``│`` marks the aggregator's
first streamed token.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_moa._extras import missing_extra

try:
    from rich import box
    from rich.console import Group, RenderableType
    from rich.table import Table
    from rich.text import Text
except ImportError as _missing:  # pragma: no cover - depends on the install
    raise missing_extra("cli", _missing) from _missing

Outcome = Literal["critical", "answered", "failed", "cut", "timed out"]

BAR_WIDTH = 40
"""Default (and widest) time axis, in characters."""

_MIN_BAR_WIDTH = 16
_MODEL_WIDTH = 18
_NOTE_WIDTH = 13  # "critical path"
# layer, call, model, start-end, note and the padding between the six columns
_OTHER_COLUMNS = 5 + 4 + _MODEL_WIDTH + 9 + _NOTE_WIDTH + 15

_BARS: dict[Outcome, tuple[str, str]] = {
    "critical": ("█", "bold magenta"),
    "answered": ("▓", "green"),
    "failed": ("✗", "red"),
    "cut": ("░", "yellow"),
    "timed out": ("▒", "red"),
}
_FIRST_TOKEN = ("│", "bold cyan")


@dataclass(frozen=True)
class Span:
    """One inner call on the timeline.

    Attributes:
        layer: The call's layer (the aggregator's is the last).
        index: The proposer's position in its layer (0 for the aggregator).
        model: The model's name.
        aggregator: Whether this is the aggregator's call.
        started_s: Start, in seconds from the run's start (``None``: unknown).
        finished_s: End, in seconds from the run's start (``None``: unknown).
        error: The call's error (``"Type: message"``), or ``None``.
        first_token_s: When the aggregator's first streamed token came.
    """

    layer: int
    index: int
    model: str
    aggregator: bool
    started_s: float | None
    finished_s: float | None
    error: str | None = None
    first_token_s: float | None = None

    @property
    def timed(self) -> bool:
        """Whether the span has both offsets."""
        return self.started_s is not None and self.finished_s is not None

    @property
    def failure(self) -> Outcome | None:
        """``"cut"``, ``"timed out"`` or ``"failed"`` for a failed call, else ``None``."""
        if self.error is None:
            return None
        kind = self.error.split(":", 1)[0]
        if kind == "LayerDeadlineError":
            return "cut"
        return "timed out" if kind.endswith("TimeoutError") else "failed"


def spans(metadata: Mapping[str, Any]) -> list[Span]:
    """The spans of every proposer and of the aggregator, in layer order.

    Args:
        metadata: An ensemble answer's ``response_metadata``.

    Returns:
        One span per record; records without offsets have ``None`` offsets.
    """
    found = [
        _span(record, aggregator=False)
        for layer in metadata.get("proposals", [])
        for record in layer
    ]
    if metadata.get("aggregator"):
        found.append(_span(metadata["aggregator"], aggregator=True))
    return found


def _span(record: Mapping[str, Any], *, aggregator: bool) -> Span:
    return Span(
        layer=int(record["layer"]),
        index=int(record.get("index", 0)),
        model=str(record.get("model", "?")),
        aggregator=aggregator,
        started_s=record.get("started_s"),
        finished_s=record.get("finished_s"),
        error=record.get("error"),
        first_token_s=record.get("first_token_s"),
    )


def critical_path(all_spans: Sequence[Span]) -> list[Span]:
    """The slowest successful proposer of each layer, then the aggregator.

    Args:
        all_spans: Every span of a run (:func:`spans`).

    Returns:
        The spans on the critical path, in layer order (timed spans only).
    """
    path: list[Span] = []
    for layer in sorted({s.layer for s in all_spans if not s.aggregator}):
        mine = [s for s in all_spans if s.layer == layer and not s.aggregator]
        answered = [s for s in mine if s.timed and not s.error]
        if answered:
            path.append(max(answered, key=lambda s: s.finished_s or 0.0))
    path.extend(s for s in all_spans if s.aggregator and s.timed and not s.error)
    return path


def outcome(span: Span, path: Iterable[Span]) -> Outcome:
    """How ``span`` is drawn: on the critical path, answered, or its failure."""
    return span.failure or ("critical" if span in path else "answered")


def bar(span: Span, outcome_: Outcome, total: float, width: int = BAR_WIDTH) -> Text:
    """``span``'s bar on an axis from 0 to ``total`` seconds, ``width`` characters wide.

    A call always covers at least one character; the first-token mark, if any,
    replaces the character at its time.
    """
    cells = [" "] * width
    styles = [""] * width
    if span.timed and total > 0:
        first = _cell(span.started_s or 0.0, total, width)
        last = max(first, math.ceil((span.finished_s or 0.0) / total * width) - 1)
        char, style = _BARS[outcome_]
        for i in range(first, min(last, width - 1) + 1):
            cells[i], styles[i] = char, style
        if span.first_token_s is not None:
            mark = _cell(span.first_token_s, total, width)
            cells[mark], styles[mark] = _FIRST_TOKEN
    text = Text()
    for char, style in zip(cells, styles, strict=True):
        text.append(char, style=style or None)
    return text


def _cell(seconds: float, total: float, width: int) -> int:
    return min(width - 1, max(0, int(seconds / total * width)))


def _note(span: Span, outcome_: Outcome) -> Text:
    parts: list[tuple[str, str]] = []
    if outcome_ == "critical":
        parts.append(("critical path", "magenta"))
    elif outcome_ != "answered":
        kind = (span.error or "").split(":", 1)[0]
        words = {"failed": f"failed ({kind})", "cut": "cut at the layer deadline"}
        parts.append((words.get(outcome_, outcome_), "red"))
    if span.first_token_s is not None:
        parts.append((f"first token {span.first_token_s:.2f}s", "cyan"))
    text = Text()
    for i, (words, style) in enumerate(parts):
        text.append(("\n" if i else "") + words, style=style)
    return text


def _axis(total: float, width: int) -> str:
    left, right = "0s", f"{total:.2f}s"
    return left + " " * max(1, width - len(left) - len(right)) + right


def render_timeline(metadata: Mapping[str, Any], width: int = BAR_WIDTH) -> RenderableType:
    """The run's text Gantt chart, one row per proposer and the aggregator.

    Args:
        metadata: An ensemble answer's ``response_metadata`` (``proposals`` and
            ``aggregator`` records with ``started_s``/``finished_s``).
        width: Width of the time axis, in characters.

    Returns:
        A ``rich`` table (grouped by layer) and its legend, or a one-line note
        if the records carry no offsets.
    """
    all_spans = spans(metadata)
    ends = [s.finished_s for s in all_spans if s.timed] + [
        s.first_token_s for s in all_spans if s.first_token_s is not None
    ]
    if not ends:
        return Text("No timeline: the records carry no start and end offsets.", style="dim")
    total = max(ends)  # type: ignore[type-var]
    path = critical_path(all_spans)
    table = Table(
        title="Timeline (seconds from the run's start)",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        expand=False,
    )
    table.add_column("layer", justify="right", no_wrap=True)
    table.add_column("call", no_wrap=True)
    table.add_column("model", no_wrap=True, overflow="ellipsis", max_width=_MODEL_WIDTH)
    table.add_column(_axis(total, width), no_wrap=True, min_width=width)
    table.add_column("start-end", justify="right", no_wrap=True)
    table.add_column("note", overflow="fold", min_width=_NOTE_WIDTH)
    for i, span in enumerate(all_spans):
        drawn = outcome(span, path)
        table.add_row(
            str(span.layer),
            "agg" if span.aggregator else f"p{span.index}",
            span.model,
            bar(span, drawn, total, width),
            f"{_seconds(span.started_s)}-{_seconds(span.finished_s)}",
            _note(span, drawn),
            end_section=i + 1 < len(all_spans) and all_spans[i + 1].layer != span.layer,
        )
    return Group(table, _legend())


def bar_width_for(console_width: int) -> int:
    """A time axis that leaves room for the other columns in ``console_width``."""
    return max(_MIN_BAR_WIDTH, min(BAR_WIDTH, console_width - _OTHER_COLUMNS))


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _legend() -> Text:
    legend = Text()
    names = {"critical": "critical path", "cut": "cut at the layer deadline"}
    entries = [(char, style, names.get(name, name)) for name, (char, style) in _BARS.items()]
    entries.append((*_FIRST_TOKEN, "first token"))
    for i, (char, style, name) in enumerate(entries):
        legend.append(("  " if i else "") + char, style=style)
        legend.append(f" {name}")
    return legend
