"""Mixture-of-Agents as a LangChain chat model, orchestrated with LangGraph."""

from importlib import metadata

from langchain_moa.aggregation import AggregationStrategy
from langchain_moa.agreement import Agreement
from langchain_moa.budget import BudgetExceededError
from langchain_moa.chat_model import MoAChatModel
from langchain_moa.errors import AggregatorFailedError, MoAError, ProposersFailedError
from langchain_moa.prompts import DEFAULT_AGGREGATOR_PROMPT, ReferenceFormat
from langchain_moa.runs import PROGRESS_EVENT
from langchain_moa.state import Proposal
from langchain_moa.strategies import Rank, Sequential, Staircase, Synthesize

try:
    __version__ = metadata.version("langchain-moa")
except metadata.PackageNotFoundError:  # pragma: no cover - source checkout
    __version__ = "0.0.0"

__all__ = [
    "DEFAULT_AGGREGATOR_PROMPT",
    "PROGRESS_EVENT",
    "AggregationStrategy",
    "AggregatorFailedError",
    "Agreement",
    "BudgetExceededError",
    "MoAChatModel",
    "MoAError",
    "Proposal",
    "ProposersFailedError",
    "Rank",
    "ReferenceFormat",
    "Sequential",
    "Staircase",
    "Synthesize",
    "__version__",
]
