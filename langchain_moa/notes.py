"""What the cost controls decided during a run, kept in the graph state.

The ``controls`` channel of ``MoAState`` is one dict, written by the layer
subgraphs' ``start`` and ``finish`` nodes and by the proposer guard, read by
later layers and by the final report:

* ``"kept"``: ``{layer: {"indices": [...], "strategy": str, "reasons": {index: str}}}``,
  the proposals of a layer that go on as references (``select_references``);
* ``"stopped_after"``: the last proposer layer that ran when later ones were
  skipped, with ``"stop_reason"`` (``"budget"`` or ``"agreement"``);
* ``"tripped"``: ``{model key: {"layer", "model", "reason"}}``, proposers that
  failed permanently (the circuit breaker);
* ``"budget"``, ``"agreement"``, ``"judge"``: per layer, for the report.

Entries are keyed by layer, never appended to lists, so merging a layer
subgraph's whole output back into the parent state is idempotent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_moa.state import Proposal

CONTROLS = "controls"
"""The state key of the channel."""


def merge_notes(left: Mapping[str, Any] | None, right: Mapping[str, Any] | None) -> dict[str, Any]:
    """Reducer: merge two notes dicts, nested dicts key by key, ``right`` winning.

    Args:
        left: The notes so far.
        right: An update.

    Returns:
        The merged notes (new dicts; neither argument is changed).
    """
    merged: dict[str, Any] = dict(left or {})
    for key, value in (right or {}).items():
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            merged[key] = merge_notes(old, value)
        else:
            merged[key] = value
    return merged


def notes_of(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """The run's notes (empty when no control acted)."""
    return state.get(CONTROLS) or {}


def stopped_after(state: Mapping[str, Any]) -> int | None:
    """The last proposer layer that ran, if later layers were skipped."""
    return notes_of(state).get("stopped_after")


def source_layer(state: Mapping[str, Any], layer: int) -> int:
    """The layer whose answers are the references of layer ``layer + 1``.

    That is ``layer`` itself, unless the run stopped adding layers before it.
    """
    stopped = stopped_after(state)
    return layer if stopped is None else min(layer, stopped)


def reference_proposals(state: Mapping[str, Any], layer: int) -> list[Proposal]:
    """The proposals that go on as references after ``layer``.

    The successful ones of the layer (of the last layer that ran, if the run
    stopped early), less those that reference selection left out.

    Args:
        state: The graph state.
        layer: The layer whose answers are read.

    Returns:
        The proposals, in proposer order.
    """
    layer = source_layer(state, layer)
    proposals: Sequence[Proposal] = state.get("proposals", [])
    kept = (notes_of(state).get("kept") or {}).get(layer)
    chosen = None if kept is None else set(kept["indices"])
    return [
        p for p in proposals if p.layer == layer and p.ok and (chosen is None or p.index in chosen)
    ]
