"""Entry points for LangGraph Server (``langgraph.json`` at the repository root).

* ``graph``: a ``MessagesState`` graph with one node, ``moa``, that calls the
  ensemble. Threads keep the conversation; ``stream_mode="messages-tuple"``
  carries the aggregator's tokens only.
* ``engine``: the ensemble's own LangGraph graph, ``llm.graph`` (its output
  also has ``proposals`` and ``aggregation``).
* ``app``: the OpenAI-compatible app of :mod:`langchain_moa.server`, mounted
  by ``langgraph.json``'s ``http.app`` beside LangGraph's own routes.

Importing this module builds the ensemble (and, with nothing configured,
starts the simulator); ``app`` is built on first use.

The line-up comes from the environment: ``MOA_CONFIG`` (a ``moa serve``
TOML file; ``MOA_ENSEMBLE`` picks one of its ensembles, default the first),
else ``MOA_PRESET`` (``together-moa``, ``together-moa-lite``, ``openai``),
else the line-up ``moa`` would choose, refined by ``MOA_PROPOSERS`` (comma
separated), ``MOA_AGGREGATOR`` and ``MOA_LAYERS``; with nothing configured,
the bundled simulator starts in this process and the answers are simulated.
"""

from __future__ import annotations

import argparse
import atexit
import os
from contextlib import ExitStack
from functools import cache
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableLambda
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph

from langchain_moa.chat_model import MoAChatModel
from langchain_moa.cli import choose_lineup
from langchain_moa.lineups import LineUp
from langchain_moa.presets import PAPER_MAX_TOKENS, PAPER_TEMPERATURE, preset_lineup

_RESOURCES = ExitStack()
atexit.register(_RESOURCES.close)


@cache
def lineup_from_environment() -> LineUp:
    """The line-up the environment asks for (see the module docstring), once per process.

    Raises:
        ValueError: An unknown preset or ensemble, or a bad configuration file.
    """
    if path := os.environ.get("MOA_CONFIG"):
        from langchain_moa.server.config import load_config

        lineups = load_config(path)
        wanted = os.environ.get("MOA_ENSEMBLE") or lineups[0].name
        for lineup in lineups:
            if lineup.name == wanted:
                return lineup
        msg = f"MOA_ENSEMBLE={wanted!r} is not an ensemble of {path}"
        raise ValueError(msg)
    layers = int(os.environ["MOA_LAYERS"]) if os.environ.get("MOA_LAYERS") else None
    if preset := os.environ.get("MOA_PRESET"):
        return preset_lineup(preset, layers=layers)
    proposers = [p.strip() for p in os.environ.get("MOA_PROPOSERS", "").split(",") if p.strip()]
    args = argparse.Namespace(
        layers=layers or 3,
        proposers=proposers or None,
        aggregator=os.environ.get("MOA_AGGREGATOR") or None,
        temperature=PAPER_TEMPERATURE,
        max_tokens=PAPER_MAX_TOKENS,
        base_url=None,
        simulate=False,
    )
    return choose_lineup(args, _RESOURCES)


@cache
def ensemble() -> MoAChatModel:
    """The ensemble this deployment serves (built once per process)."""
    return lineup_from_environment().build()


def build_graph(llm: MoAChatModel) -> CompiledStateGraph:
    """A ``MessagesState`` graph whose one node answers with the ensemble.

    Args:
        llm: The ensemble.

    Returns:
        The compiled graph (``START -> moa -> END``).
    """

    def answer(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [llm.invoke(state["messages"])]}

    async def aanswer(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("moa", RunnableLambda(answer, afunc=aanswer, name="moa"))
    builder.add_edge(START, "moa")
    builder.add_edge("moa", END)
    return builder.compile(name="mixture-of-agents")


graph = build_graph(ensemble())
"""The ``MessagesState`` graph with the MoA node (``langgraph.json``: ``moa``)."""

engine = ensemble().graph
"""The ensemble's own graph, ``llm.graph`` (``langgraph.json``: ``moa_engine``)."""


def __getattr__(name: str) -> Any:
    """Build ``app`` on first use, so that only it needs the ``server`` extra.

    Raises:
        AttributeError: Any other name.
    """
    if name == "app":
        return _app()
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


@cache
def _app() -> Any:
    from langchain_moa.server import create_app
    from langchain_moa.server.auth import server_keys

    return create_app({lineup_from_environment().name: ensemble()}, api_keys=server_keys())
