"""Sizes and simulated latencies of every benchmark (default and ``--quick``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Sizes:
    """Every knob of a benchmark run; all latencies are in seconds.

    Attributes:
        repeats: Timed runs per measured configuration (medians are reported).
        proposers: Proposers per layer.
        path_latency: First-token latency of every model (critical path).
        overhead_runs: Zero-latency calls of each kind per repeat (overhead).
        ttft_proposer_latency: Proposers' first-token latency (time to first token).
        ttft_aggregator_latency: The aggregator's first-token latency.
        ttft_token_delay: The aggregator's delay between streamed tokens.
        tail_runs: Requests measured per variant (tail latency).
        tail_interval: Seconds between the starts of two requests (tail latency).
        tail_seed: Seed of the straggler's latency draws.
        tail_median: Median of the straggler's lognormal latency.
        tail_sigma: Sigma (of the log) of the straggler's lognormal latency.
        tail_max: Cap on one straggler latency draw.
        tail_fast: Slowest and fastest latency of the other proposers.
        tail_aggregator_latency: The aggregator's latency (tail latency).
        layer_deadline: ``MoAChatModel.layer_deadline`` of the deadline variant.
        min_proposers: ``MoAChatModel.min_proposers`` of the deadline variant.
        proposer_timeout: ``MoAChatModel.proposer_timeout`` of the timeout variant.
        throughput_questions: Questions per ``abatch`` (throughput).
        throughput_concurrency: ``max_concurrency`` of the ``abatch``.
        throughput_latency: First-token latency of every model (throughput).
        throughput_layers: Layers of the throughput ensemble.
        throughput_repeats: Timed batches of each kind (throughput).
        memory_requests: Concurrent ``ainvoke`` requests (memory).
        memory_latency: First-token latency of every model (memory).
        serve_requests: Concurrent requests per batch (serve).
        serve_proposers: Proposers of the served MoA-Lite ensemble (serve).
        serve_latency: First-token latency of every model (serve).
        serve_workers: ``moa serve --workers`` values measured (serve).
        serve_repeats: Timed batches of each kind per worker count (serve).
        serve_sequential: Requests sent one at a time, for latency without load (serve).
        cost_prompt_tokens: Tokens of the question (cost).
        cost_answer_tokens: Tokens of every simulated answer (cost).
        strategies_answer_tokens: Tokens of every proposer's answer (strategies).
        strategies_latency: Every model's first-token latency (strategies).
        strategies_token_delay: Every model's delay between streamed tokens (strategies).
        strategies_repeats: Timed requests per strategy, MoA-Lite; MoA gets one (strategies).
    """

    repeats: int = 5
    proposers: int = 6
    path_latency: float = 0.3
    overhead_runs: int = 20
    ttft_proposer_latency: float = 0.3
    ttft_aggregator_latency: float = 0.2
    ttft_token_delay: float = 0.02
    tail_runs: int = 100
    tail_interval: float = 0.1
    tail_seed: int = 1
    tail_median: float = 0.3
    tail_sigma: float = 1.4
    tail_max: float = 10.0
    tail_fast: tuple[float, float] = (0.1, 0.2)
    tail_aggregator_latency: float = 0.15
    layer_deadline: float = 0.4
    min_proposers: int = 4
    proposer_timeout: float = 1.0
    throughput_questions: int = 200
    throughput_concurrency: int = 20
    throughput_latency: float = 0.3
    throughput_layers: int = 3
    throughput_repeats: int = 2
    memory_requests: int = 500
    memory_latency: float = 0.5
    serve_requests: int = 100
    serve_proposers: int = 3
    serve_latency: float = 0.3
    serve_workers: tuple[int, ...] = (1, 2)
    serve_repeats: int = 3
    serve_sequential: int = 10
    cost_prompt_tokens: int = 300
    cost_answer_tokens: int = 400
    strategies_answer_tokens: int = 400
    strategies_latency: float = 0.3
    strategies_token_delay: float = 0.02
    strategies_repeats: int = 2

    def to_dict(self) -> dict[str, Any]:
        """The knobs as JSON-ready values."""
        return {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}


DEFAULT = Sizes()
"""The default run: modest but meaningful, a few minutes on 2 cores."""

QUICK = replace(
    DEFAULT,
    repeats=1,
    path_latency=0.05,
    overhead_runs=3,
    ttft_proposer_latency=0.05,
    ttft_aggregator_latency=0.03,
    ttft_token_delay=0.002,
    tail_runs=8,
    tail_interval=0.01,
    tail_median=0.05,
    tail_max=0.5,
    tail_fast=(0.02, 0.04),
    tail_aggregator_latency=0.02,
    layer_deadline=0.08,
    proposer_timeout=1.0,  # generous: the smoke run must pass on a loaded 2-core machine
    throughput_questions=10,
    throughput_concurrency=5,
    throughput_latency=0.05,
    throughput_repeats=1,
    memory_requests=10,
    memory_latency=0.05,
    serve_requests=8,
    serve_proposers=2,
    serve_latency=0.05,
    serve_workers=(1,),
    serve_repeats=1,
    serve_sequential=2,
    cost_prompt_tokens=30,
    cost_answer_tokens=40,
    strategies_answer_tokens=40,
    strategies_latency=0.03,
    strategies_token_delay=0.002,
    strategies_repeats=1,
)
"""A tiny run that only checks that every benchmark works (smoke test)."""
