"""The compiled graph's shape, as Mermaid: snapshots and the README's copy.

Set ``UPDATE_SNAPSHOTS=1`` to rewrite the snapshot files after a deliberate change
of the graph's shape (then review the diff).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from langchain_moa import MoAChatModel

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOTS = Path(__file__).parent / "snapshots"


def model(name: str) -> FakeListChatModel:
    return FakeListChatModel(responses=["x"], name=name)


LINE_UPS = {
    "moa_3x3": lambda: MoAChatModel(
        proposers=[model("a"), model("b"), model("c")], aggregator=model("agg"), layers=3
    ),
    "moa_lite_2": lambda: MoAChatModel(
        proposers=[model("a"), model("b")], aggregator=model("agg"), layers=2
    ),
    "per_layer_3_1": lambda: MoAChatModel(
        proposers=[[model("a"), model("b"), model("c")], [model("d")]], aggregator=model("agg")
    ),
}


def mermaid(llm: MoAChatModel) -> str:
    return llm.graph.get_graph(xray=True).draw_mermaid()


@pytest.mark.parametrize("name", sorted(LINE_UPS))
def test_the_graph_keeps_its_shape(name: str) -> None:
    drawn = mermaid(LINE_UPS[name]())
    snapshot = SNAPSHOTS / f"{name}.mmd"
    if os.environ.get("UPDATE_SNAPSHOTS"):
        snapshot.write_text(drawn, encoding="utf-8")
    assert drawn == snapshot.read_text(encoding="utf-8")


def test_the_readme_shows_the_current_graph() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert block == mermaid(LINE_UPS["moa_3x3"]()), (
        "README's Mermaid diagram is stale: paste the output of "
        "llm.graph.get_graph(xray=True).draw_mermaid() for 3 proposers, 3 layers"
    )


def test_the_graph_takes_messages_and_declares_its_run_options_as_context() -> None:
    from langchain_moa.engine import RunOptions
    from tests.unit_tests.fakes import RecordingChatModel

    llm = MoAChatModel(proposers=[RecordingChatModel(name="a")], aggregator=RecordingChatModel())
    # What LangGraph tools (Studio, the server's assistants API) show a caller.
    assert sorted(llm.graph.get_input_jsonschema()["properties"]) == ["messages"]
    assert llm.graph.context_schema is RunOptions
