"""The built-in aggregation strategies, one file each (see ``langchain_moa.aggregation``).

``MoAChatModel(aggregation=...)`` takes a name of :data:`BUILT_IN` or a
configured instance (``Staircase(chunk_tokens=48)``, ``Sequential(window=3)``).
To add a strategy: write its class in a file of this package (a frozen dataclass
subclassing ``AggregationStrategy`` or ``StepwiseStrategy``), add its name here,
and test it against the simulator.
"""

from __future__ import annotations

from langchain_moa.aggregation import AggregationStrategy
from langchain_moa.strategies.rank import Rank
from langchain_moa.strategies.sequential import Sequential
from langchain_moa.strategies.staircase import Staircase
from langchain_moa.strategies.synthesize import Synthesize

BUILT_IN: dict[str, type[AggregationStrategy]] = {
    strategy.name: strategy for strategy in (Synthesize, Rank, Staircase, Sequential)
}
"""The built-in strategies by name."""

__all__ = ["BUILT_IN", "Rank", "Sequential", "Staircase", "Synthesize", "resolve_aggregation"]


def resolve_aggregation(value: str | AggregationStrategy) -> AggregationStrategy:
    """The strategy named by ``value``, or ``value`` itself if it is a strategy.

    Args:
        value: A name of :data:`BUILT_IN` or an ``AggregationStrategy``.

    Returns:
        The strategy (a name gives the strategy with its default settings).

    Raises:
        ValueError: ``value`` names no strategy.
    """
    if isinstance(value, AggregationStrategy):
        return value
    if isinstance(value, str) and value in BUILT_IN:
        return BUILT_IN[value]()
    names = ", ".join(repr(name) for name in BUILT_IN)
    msg = f"aggregation must be one of {names} or an AggregationStrategy instance, got {value!r}"
    raise ValueError(msg)
