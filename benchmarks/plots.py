"""Charts of the benchmark results (``python -m benchmarks --plots DIR``), as PNG files.

Each chart is drawn from the results' JSON form alone (``results.json``), so it
can be redrawn from a saved run with ``--from-results``. Drawing uses
matplotlib's Agg canvas (no display needed); matplotlib comes with the
``[bench]`` extra.

- ``critical_path.png``: wall time (``invoke``, ``ainvoke``) next to the
  critical path and the sequential baseline, by layer count.
- ``ttft.png``: tokens received over time, one model alone versus the
  ensemble (``synthesize``), with each one's time to first token.
- ``tail_latency.png``: the CDF of request latency with and without a layer
  deadline (and with a proposer timeout).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from langchain_moa._extras import missing_extra

try:
    from matplotlib.axes import Axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError as _missing:  # pragma: no cover - depends on the install
    raise missing_extra("bench", _missing) from _missing

_DPI = 120
_SIZE = (7.5, 4.2)
_CRITICAL_PATH_LAYERS = {"moa_lite": ("MoA-Lite", 2), "moa": ("MoA", 3)}
_LOG_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1, 2, 3, 5, 10, 20, 50)
_TAIL_VARIANTS = {
    "no_deadline": ("no deadline", "tab:red"),
    "layer_deadline": ("layer_deadline", "tab:green"),
    "proposer_timeout": ("proposer_timeout", "tab:blue"),
}


def _figure() -> tuple[Figure, Axes]:
    figure = Figure(figsize=_SIZE, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def critical_path_chart(section: Mapping[str, Any]) -> Figure:
    """Wall time vs critical path vs the sequential baseline, by layer count.

    Args:
        section: The ``critical_path`` section of the results.

    Returns:
        A bar chart: per layer count, the critical path, the medians of
        ``invoke`` and ``ainvoke``, and the same calls made one after another.
    """
    details = section["details"]
    configs = [key for key in _CRITICAL_PATH_LAYERS if key in details]
    series = {
        "critical path (layers x latency)": ("critical_path_s", "0.6"),
        "invoke (median)": ("invoke_s", "tab:blue"),
        "ainvoke (median)": ("ainvoke_s", "tab:cyan"),
        "same calls one after another": ("sequential_s", "tab:red"),
    }
    figure, axes = _figure()
    bar_width = 0.8 / len(series)
    for i, (label, (key, color)) in enumerate(series.items()):
        values = [_seconds(details[config][key]) for config in configs]
        positions = [c + (i - (len(series) - 1) / 2) * bar_width for c in range(len(configs))]
        bars = axes.bar(positions, values, bar_width, label=label, color=color)
        axes.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    axes.set_xticks(
        range(len(configs)),
        [f"{_CRITICAL_PATH_LAYERS[c][0]}\n({_CRITICAL_PATH_LAYERS[c][1]} layers)" for c in configs],
    )
    params = section.get("params", {})
    axes.set_ylabel("seconds per request")
    axes.set_title(
        f"Wall time vs critical path: {params.get('proposers', '?')} proposers, "
        f"{_ms(params.get('latency_s'))} per call"
    )
    axes.legend(fontsize=8, loc="upper left")
    axes.margins(y=0.15)
    return figure


def _seconds(value: float | Sequence[float]) -> float:
    return float(value) if isinstance(value, (int, float)) else _median(value)


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.0f} ms"


def has_token_arrivals(section: Mapping[str, Any]) -> bool:
    """Whether a ``ttft`` section recorded token arrival times (newer runs do)."""
    arrivals = section.get("details", {}).get("token_arrivals_s", {})
    return bool(arrivals.get("one_model")) and bool(arrivals.get("synthesize"))


def ttft_chart(section: Mapping[str, Any]) -> Figure:
    """Tokens received over time: one model alone vs the ensemble (``synthesize``).

    Args:
        section: The ``ttft`` section of the results, with ``token_arrivals_s``.

    Returns:
        A step chart of tokens received against seconds since the call, one
        line per repeat, each series' median time to first token marked.
    """
    details = section["details"]
    arrivals = details["token_arrivals_s"]
    series = {
        "one model alone": ("one_model", "tab:blue"),
        "MoA, synthesize": ("synthesize", "tab:purple"),
    }
    figure, axes = _figure()
    for label, (key, color) in series.items():
        runs = arrivals[key]
        first = _median([run[0] for run in runs])
        for n, run in enumerate(runs):
            times = [0.0, *run]
            counts = list(range(len(run) + 1))
            axes.step(
                times,
                counts,
                where="post",
                color=color,
                alpha=0.35 if n else 0.9,
                label=f"{label}: first token {first:.2f} s (median)" if n == 0 else None,
            )
        axes.axvline(first, color=color, linestyle="--", linewidth=1)
    ideal = details.get("ideal_s")
    if ideal is not None:
        label = f"MoA's ideal: proposer layers + aggregator's first token = {ideal:.2f} s"
        axes.axvline(ideal, color="0.4", linestyle=":", linewidth=1, label=label)
    params = section.get("params", {})
    axes.set_xlabel("seconds since the call (sync stream)")
    axes.set_ylabel("tokens received")
    axes.set_title(
        f"Time to first token: one model alone vs MoA ({params.get('layers', '?')} layers)\n"
        f"proposers {_ms(params.get('proposer_latency_s'))}; the aggregator "
        f"{_ms(params.get('aggregator_first_token_latency_s'))} to its first token, then "
        f"{_ms(params.get('aggregator_token_delay_s'))} per token",
        fontsize=10,
    )
    axes.set_xlim(left=0)
    axes.set_ylim(bottom=0)
    axes.legend(fontsize=8, loc="upper left")
    return figure


def tail_chart(section: Mapping[str, Any]) -> Figure:
    """The CDF of request latency with and without a layer deadline.

    Args:
        section: The ``tail_latency`` section of the results.

    Returns:
        One empirical CDF per variant on a log time axis, p50 and p99 in the
        legend.
    """
    details = section["details"]
    params = section.get("params", {})
    variants = params.get("variants", {})
    figure, axes = _figure()
    for key, (name, color) in _TAIL_VARIANTS.items():
        if key not in details:
            continue
        latencies = sorted(details[key]["latencies_s"])
        fractions = [(i + 1) / len(latencies) for i in range(len(latencies))]
        settings = ", ".join(f"{k}={v:g}" for k, v in variants.get(key, {}).items()) or name
        axes.step(
            latencies,
            fractions,
            where="post",
            color=color,
            label=(
                f"{settings}: p50 {details[key]['p50_s']:.2f} s, p99 {details[key]['p99_s']:.2f} s"
            ),
        )
    axes.axhline(0.99, color="0.5", linestyle=":", linewidth=1)
    axes.text(0.01, 0.985, "p99", transform=axes.get_yaxis_transform(), va="top", fontsize=8)
    axes.set_xscale("log")
    low, high = axes.get_xlim()
    ticks = [t for t in _LOG_TICKS if low <= t <= high]
    axes.set_xticks(ticks, [f"{t:g}" for t in ticks])
    axes.minorticks_off()
    axes.set_xlabel("request latency, seconds (log scale)")
    axes.set_ylabel("fraction of requests")
    axes.set_ylim(0, 1.02)
    axes.set_title(
        f"Tail latency: {params.get('runs', '?')} MoA-Lite requests, "
        f"{params.get('proposers', '?')} proposers, one heavy-tailed straggler"
    )
    axes.legend(fontsize=8, loc="lower right")
    return figure


CHARTS: dict[str, tuple[str, Callable[[Mapping[str, Any]], Figure]]] = {
    "critical_path": ("critical_path.png", critical_path_chart),
    "ttft": ("ttft.png", ttft_chart),
    "tail_latency": ("tail_latency.png", tail_chart),
}
"""Each chart: the section it is drawn from, its file name and its drawing function."""


def write_plots(results: Mapping[str, Any], directory: Path) -> tuple[list[Path], list[str]]:
    """Write every chart whose section is in ``results`` to ``directory``.

    Args:
        results: Benchmark results in their JSON form (``results.json``).
        directory: Where the PNG files go (created if needed).

    Returns:
        The files written, and a reason for each chart that was skipped.
    """
    directory.mkdir(parents=True, exist_ok=True)
    sections = results.get("sections", {})
    written, skipped = [], []
    for key, (name, draw) in CHARTS.items():
        section = sections.get(key)
        if section is None:
            skipped.append(f"{name}: the results have no {key} section")
            continue
        if key == "ttft" and not has_token_arrivals(section):
            skipped.append(f"{name}: the ttft section has no token arrivals (rerun it)")
            continue
        path = directory / name
        draw(section).savefig(path)
        written.append(path)
    return written, skipped
