"""The answer's account of cost: dollars per call and in total, and what the controls did.

``MoAChatModel`` runs the graph, then hands the final state here: every
proposal and the aggregation get ``cost_usd`` in ``response_metadata``, the
total goes in ``response_metadata["cost"]``, and what a budget, reference
selection, early stop or the circuit breaker decided is reported beside them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.runnables import Runnable

from langchain_moa.cost import Prices, pricing
from langchain_moa.layer_controls import NOT_SELECTED
from langchain_moa.notes import notes_of
from langchain_moa.state import MoAState

if TYPE_CHECKING:
    from langchain_moa.chat_model import MoAChatModel


class CostLedger:
    """Sums the cost of a run's calls and remembers which models had no price.

    Args:
        prices: The user's price table.
    """

    def __init__(self, prices: Prices | None) -> None:
        self.prices = prices
        self.total: float | None = 0.0
        self.missing: dict[str, str] = {}

    def add(
        self, model: Runnable | None, label: str, usage: Mapping[str, Any] | None
    ) -> float | None:
        """Price one call and add it to the total.

        Args:
            model: The model that made the call (``None``: not known).
            label: Its name in the metadata.
            usage: The call's usage.

        Returns:
            The call's cost in US dollars, or ``None`` if its price is unknown.
        """
        if model is None:
            self.missing.setdefault(label, "the model is not part of the ensemble")
            self.total = None
            return None
        price = pricing(model, self.prices)
        cost = price.cost(usage)
        if cost is None:
            self.missing.setdefault(label, price.reason or "no price")
            self.total = None
        elif self.total is not None:
            self.total += cost
        return None if cost is None else round(cost, 10)

    def summary(self) -> dict[str, Any]:
        """``{"total_usd", "missing_prices", "reasons"}`` for ``response_metadata["cost"]``."""
        total = None if self.total is None else round(self.total, 10)
        return {
            "total_usd": total,
            "missing_prices": sorted(self.missing),
            "reasons": dict(sorted(self.missing.items())),
        }


def _proposer(model: MoAChatModel, layer: int, index: int) -> Runnable | None:
    layers = model.proposer_layers
    if 1 <= layer <= len(layers) and 0 <= index < len(layers[layer - 1]):
        return layers[layer - 1][index]
    return None


def _aggregator(model: MoAChatModel, record: Mapping[str, Any]) -> Runnable:
    if record.get("fallback_from") and model.fallback_aggregator is not None:
        return model.fallback_aggregator
    return model.aggregator


def _priced_proposals(
    model: MoAChatModel, layers: Sequence[Sequence[Mapping[str, Any]]], ledger: CostLedger
) -> list[list[dict[str, Any]]]:
    priced = []
    for records in layers:
        row = []
        for record in records:
            runnable = _proposer(model, record["layer"], record["index"])
            cost = ledger.add(runnable, record["model"], record.get("usage"))
            row.append({**record, "cost_usd": cost})
        priced.append(row)
    return priced


def _judge_calls(
    model: MoAChatModel, notes: Mapping[str, Any], ledger: CostLedger
) -> tuple[list[dict[str, Any]], list[UsageMetadata]]:
    """The selection judge's calls, priced, and their usage."""
    calls, usages = [], []
    judge = getattr(model, "selection_judge", None)
    for layer, call in sorted((notes.get("judge") or {}).items()):
        usage = call.get("usage")
        cost = ledger.add(judge, call["model"], usage)
        calls.append({"layer": layer, **call, "cost_usd": cost})
        if usage:
            usages.append(usage)
    return calls, usages


def annotate(model: MoAChatModel, state: MoAState) -> MoAState:
    """The final state with the answer's cost and the controls' record added.

    Args:
        model: The ensemble that ran.
        state: The graph's final state.

    Returns:
        The state with its last message replaced by the annotated answer.
    """
    answer = state["messages"][-1]
    if not isinstance(answer, AIMessage):
        return state
    metadata = dict(answer.response_metadata)
    notes = notes_of(state)
    ledger = CostLedger(getattr(model, "prices", None))
    metadata["proposals"] = _priced_proposals(model, metadata.get("proposals", []), ledger)
    usage = answer.usage_metadata
    if "aggregator" in metadata:
        record = metadata["aggregator"]
        cost = ledger.add(_aggregator(model, record), record["model"], record.get("usage"))
        metadata["aggregator"] = {**record, "cost_usd": cost}
    judged, judge_usage = _judge_calls(model, notes, ledger)
    if judged:
        metadata["selection_judge"] = judged
        for extra in judge_usage:
            usage = extra if usage is None else add_usage(usage, extra)
    metadata["cost"] = ledger.summary()
    metadata.update(controls_report(notes, metadata, usage))
    updated = answer.model_copy(update={"response_metadata": metadata, "usage_metadata": usage})
    return {**state, "messages": [*state["messages"][:-1], updated]}


@dataclass
class Spend:
    """Tokens and US dollars summed over answers (for the command-line tools).

    Attributes:
        input_tokens: Input tokens of every inner call.
        output_tokens: Output tokens of every inner call.
        total_usd: Dollars, or ``None`` once an answer's cost was unknown.
        missing_prices: Models that had no price.
        reasons: Why, by model.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    total_usd: float | None = 0.0
    missing_prices: set[str] = field(default_factory=set)
    reasons: dict[str, str] = field(default_factory=dict)

    def add(self, answer: Any) -> None:
        """Count one answer (an ``AIMessage``; anything else is ignored)."""
        if not isinstance(answer, AIMessage):
            return
        usage = answer.usage_metadata or {}
        self.input_tokens += int(usage.get("input_tokens") or 0)
        self.output_tokens += int(usage.get("output_tokens") or 0)
        cost = answer.response_metadata.get("cost") or {}
        total = cost.get("total_usd")
        if total is None:
            self.missing_prices.update(cost.get("missing_prices") or ["the ensemble"])
            self.reasons.update(cost.get("reasons") or {})
            self.total_usd = None
        elif self.total_usd is not None:
            self.total_usd += total

    def describe(self) -> str:
        """One line: tokens in, out and in total, and the cost in dollars."""
        tokens = (
            f"{self.input_tokens} in, {self.output_tokens} out, "
            f"{self.input_tokens + self.output_tokens} total across all inner calls"
        )
        if self.total_usd is not None:
            return f"{tokens}; cost ${self.total_usd:.6f}"
        reasons = set(self.reasons.values())
        why = f" ({reasons.pop()})" if len(reasons) == 1 else ""
        return f"{tokens}; cost unknown: no price for {', '.join(sorted(self.missing_prices))}{why}"


def _not_selected(record: Mapping[str, Any]) -> bool:
    return str(record.get("error") or "").startswith(NOT_SELECTED)


def _budget_report(
    notes: Mapping[str, Any], metadata: Mapping[str, Any], usage: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The budget's checks, and its estimate against what the call spent."""
    checks = [{"layer": layer, **check} for layer, check in sorted(notes["budget"].items())]
    ran = [c for c in checks if c["ran"]]
    estimated_usd: float | None = 0.0
    estimated_tokens = 0
    for check in ran:
        estimated_tokens += check["layer_estimate"]["tokens"]
        usd = check["layer_estimate"]["usd"]
        estimated_usd = None if usd is None or estimated_usd is None else estimated_usd + usd
    if ran:
        final = ran[-1]["aggregation_estimate"]
        estimated_tokens += final["tokens"]
        if estimated_usd is not None and final["usd"] is not None:
            estimated_usd += final["usd"]
        else:
            estimated_usd = None
    stopped = notes.get("stopped_after") if notes.get("stop_reason") == "budget" else None
    return {
        "budget": {
            **notes.get("budget_limits", {}),
            "checks": checks,
            "estimated": {"usd": estimated_usd, "tokens": estimated_tokens},
            "actual": {
                "usd": metadata["cost"]["total_usd"],
                "tokens": int((usage or {}).get("total_tokens") or 0),
            },
        },
        "budget_stopped_after_layer": stopped,
    }


def controls_report(
    notes: Mapping[str, Any], metadata: dict[str, Any], usage: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What the cost controls did, for ``response_metadata`` (nothing if none acted).

    Args:
        notes: The run's ``controls`` notes.
        metadata: The answer's metadata so far (its ``failed_proposers`` and
            ``degraded`` are corrected for stragglers that ``"first"`` cancelled).
        usage: The answer's total usage.

    Returns:
        ``budget`` and ``budget_stopped_after_layer``, ``selection``,
        ``early_stop`` and ``circuit_breaker``, each only when it applies.
    """
    report: dict[str, Any] = {}
    if "budget" in notes:
        report.update(_budget_report(notes, metadata, usage))
    if "kept" in notes:
        report["selection"] = [
            {"layer": layer, **entry} for layer, entry in sorted(notes["kept"].items())
        ]
    if "agreement" in notes:
        stopped = notes.get("stopped_after") if notes.get("stop_reason") == "agreement" else None
        report["early_stop"] = {
            "stopped_after_layer": stopped,
            "layers": [{"layer": k, **v} for k, v in sorted(notes["agreement"].items())],
        }
    if "tripped" in notes:
        report["circuit_breaker"] = [
            {"model": model, **entry} for model, entry in sorted(notes["tripped"].items())
        ]
    records = [r for layer in metadata.get("proposals", []) for r in layer]
    if any(_not_selected(r) for r in records):
        failed = [r for r in records if r.get("error") and not _not_selected(r)]
        metadata["failed_proposers"] = len(failed)
        fallback = (metadata.get("aggregator") or {}).get("fallback_from")
        metadata["degraded"] = bool(failed) or fallback is not None
    return report
