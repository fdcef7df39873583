"""The LangGraph state machine that runs Mixture-of-Agents.

Shape: ``START -> layer_1 -> ... -> layer_{L-1} -> aggregate -> END``. Each
``layer_k`` is a subgraph ``start -> proposer_0 .. proposer_{n-1} -> finish`` whose
proposer nodes run in parallel (threads on the sync path, tasks on the async
path); see ``layers``. Proposer failures are recorded, not raised; ``finish``
enforces the quorum. The ``aggregate`` node (``aggregate_node``) appends the
ensemble's answer, written by the ensemble's aggregation strategy: the
aggregator's message with the summed usage of every inner call and every
proposal in its ``response_metadata``, the same message ``MoAChatModel``
returns, so the graph used alone or as a subgraph gives the same result as the
chat model. A strategy that runs the last proposer layer itself
(``"staircase"``) gets it inside the ``aggregate`` node; the graph leaves it out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from langchain_core.runnables import Runnable
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from langchain_moa.aggregate_node import Aggregator
from langchain_moa.calls import BackgroundModels, inner_config
from langchain_moa.engine import EngineSettings, RunOptions, ensemble_answer, node, total_usage
from langchain_moa.inner_models import with_settings
from langchain_moa.layer_controls import RunControls
from langchain_moa.layers import build_layer
from langchain_moa.state import MoAInput, MoAState

__all__ = [
    "EngineSettings",
    "RunOptions",
    "build_moa_graph",
    "ensemble_answer",
    "total_usage",
]


def _sampled(proposers: Sequence[Runnable]) -> list[Runnable]:
    """The layer's proposers; a model's repeats skip the LLM cache (Self-MoA samples)."""
    seen: set[int] = set()
    models = []
    for model in proposers:
        models.append(with_settings(model, cache=False) if id(model) in seen else model)
        seen.add(id(model))
    return models


def build_moa_graph(
    proposer_layers: Sequence[Sequence[Runnable]],
    aggregator: Runnable,
    settings: EngineSettings,
) -> CompiledStateGraph:
    """Compile the Mixture-of-Agents graph.

    Args:
        proposer_layers: One list of proposer models per proposer layer.
        aggregator: The final aggregator model.
        settings: How inner models are called.

    Returns:
        A compiled graph. Input ``{"messages": [...]}``; output ``{"messages":
        [..., answer], "proposals": [Proposal, ...], "aggregation": Proposal}``.
        Per-call options go in ``context=RunOptions(...)``.

    Raises:
        ValueError: The strategy cannot apply the settings' controls (see
            ``EngineSettings.check_strategy``).
    """
    settings.check_strategy()
    background = BackgroundModels()
    # Streamed answers report usage only if asked to (langchain_openai with a
    # custom base URL does not ask by default).
    aggregator = with_settings(aggregator, stream_usage=True)
    if settings.fallback_aggregator is not None:
        fallback = with_settings(settings.fallback_aggregator, stream_usage=True)
        settings = replace(settings, fallback_aggregator=fallback)
    builder = StateGraph(MoAState, context_schema=RunOptions, input_schema=MoAInput)
    sampled = [_sampled(models) for models in proposer_layers]
    in_node: list[Runnable] = []
    if settings.strategy.runs_last_layer:
        # The strategy runs the last layer itself, streamed: its usage must be reported.
        sampled[-1] = in_node = [with_settings(m, stream_usage=True) for m in sampled[-1]]
    controls = RunControls(settings, sampled, aggregator, background, inner_config)
    in_graph = sampled[:-1] if in_node else sampled
    previous = START
    for layer, models in enumerate(in_graph, 1):
        name = f"layer_{layer}"
        subgraph = build_layer(layer, models, settings, background, controls.layer(layer))
        builder.add_node(name, subgraph)
        builder.add_edge(previous, name)
        previous = name
    last = len(proposer_layers)
    aggregate = Aggregator(
        last,
        aggregator,
        settings,
        background,
        in_node,
        controls.layer(last) if in_node else None,
    )
    builder.add_node("aggregate", node(aggregate.invoke, aggregate.ainvoke, "aggregate"))
    builder.add_edge(previous, "aggregate")
    builder.add_edge("aggregate", END)
    return builder.compile(name="mixture_of_agents")
