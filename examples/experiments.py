"""Compare the aggregator alone, MoA-Lite, MoA and Self-MoA side by side.

Every configuration answers the same five questions through
``langsmith.evaluate``; the table shows the mean score of each evaluator, the
mean latency and the total tokens per configuration.

    python examples/experiments.py             # offline: the local simulator
    TOGETHER_API_KEY=... python examples/experiments.py --together

With ``LANGSMITH_API_KEY`` set the experiments are uploaded to LangSmith (one
per configuration, on a dataset created on first use); without it, nothing
leaves the machine. The evaluators below are deterministic and read the
simulator's answer format, ``"{model} read {n} references [...] and answers:
{question}"``; with real models, use your own (an LLM judge, exact match...).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable
from langchain_openai import ChatOpenAI
from pydantic import SecretStr
from rich.console import Console

from langchain_moa import MoAChatModel
from langchain_moa.experiments import ComparisonResult, compare
from langchain_moa.presets import (
    MOA_AGGREGATOR,
    PAPER_MAX_TOKENS,
    PAPER_PROPOSERS,
    PAPER_TEMPERATURE,
    TOGETHER_BASE_URL,
    self_moa,
)
from langchain_moa.testing import ModelBehavior, OpenAISimulator

DATASET = [
    {"inputs": {"question": "Why is the sky blue?"}, "outputs": {"keyword": "sky"}},
    {"inputs": {"question": "What causes the seasons?"}, "outputs": {"keyword": "seasons"}},
    {"inputs": {"question": "How do vaccines work?"}, "outputs": {"keyword": "vaccines"}},
    {"inputs": {"question": "Why do cats purr?"}, "outputs": {"keyword": "cats"}},
    {"inputs": {"question": "What is a black hole?"}, "outputs": {"keyword": "black hole"}},
]

SIMULATED_PROPOSERS = ("proposer-a", "proposer-b", "proposer-c")
SIMULATED_AGGREGATOR = "aggregator"
SIMULATED_SELF = "strong-model"
REFERENCES = re.compile(r"\bread (\d+) references\b")


# -- evaluators (langsmith signatures) -------------------------------------------


def answered(inputs: dict[str, Any], outputs: dict[str, Any]) -> bool:
    """The answer addresses the question (the simulator repeats it)."""
    return inputs["question"] in outputs["answer"]


def keyword(outputs: dict[str, Any], reference_outputs: dict[str, Any]) -> bool:
    """The answer contains the reference keyword."""
    return reference_outputs["keyword"].lower() in outputs["answer"].lower()


def references(outputs: dict[str, Any]) -> int:
    """How many proposals the final model read (0 for a single model)."""
    match = REFERENCES.search(outputs["answer"])
    return int(match.group(1)) if match else 0


EVALUATORS = [answered, keyword, references]


# -- configurations --------------------------------------------------------------


def configurations(
    chat: Callable[[str], BaseChatModel], proposers: tuple[str, ...], aggregator: str, single: str
) -> dict[str, Runnable[Any, Any]]:
    """The four line-ups, built from a chat-model factory."""
    team = [chat(name) for name in proposers]
    return {
        "aggregator alone": chat(aggregator),
        "MoA-Lite": MoAChatModel(proposers=team, aggregator=chat(aggregator), layers=2),
        "MoA": MoAChatModel(proposers=team, aggregator=chat(aggregator), layers=3),
        "Self-MoA": self_moa(chat(single), samples=len(proposers), temperature=PAPER_TEMPERATURE),
    }


def simulated(sim: OpenAISimulator) -> dict[str, Runnable[Any, Any]]:
    """The line-ups on the local simulator, with a little latency per call."""
    for name in (*SIMULATED_PROPOSERS, SIMULATED_AGGREGATOR, SIMULATED_SELF):
        sim.set_behavior(name, ModelBehavior(first_token_latency=0.02))

    def chat(model: str) -> BaseChatModel:
        return sim.chat_model(model, temperature=PAPER_TEMPERATURE, max_tokens=PAPER_MAX_TOKENS)

    return configurations(chat, SIMULATED_PROPOSERS, SIMULATED_AGGREGATOR, SIMULATED_SELF)


def together(api_key: str) -> dict[str, Runnable[Any, Any]]:
    """The paper's models on Together: three of its proposers, its aggregator."""
    key = SecretStr(api_key)

    def chat(model: str) -> BaseChatModel:
        return ChatOpenAI(
            model=model,
            base_url=TOGETHER_BASE_URL,
            api_key=key,
            temperature=PAPER_TEMPERATURE,
            max_tokens=PAPER_MAX_TOKENS,  # type: ignore[call-arg]
            max_retries=0,
        )

    return configurations(chat, PAPER_PROPOSERS[:3], MOA_AGGREGATOR, MOA_AGGREGATOR)


def run(configs: dict[str, Runnable[Any, Any]], **kwargs: Any) -> ComparisonResult:
    """Compare the configurations on the built-in dataset."""
    return compare(configs, DATASET, EVALUATORS, experiment_prefix="moa-example", **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--together", action="store_true", help="real models on Together")
    args = parser.parse_args()
    console = Console()
    if args.together:
        if not os.environ.get("TOGETHER_API_KEY"):
            parser.error("--together needs TOGETHER_API_KEY")
        result = run(together(os.environ["TOGETHER_API_KEY"]))
    else:
        with OpenAISimulator() as sim:
            result = run(simulated(sim))
    console.print(result.table())


if __name__ == "__main__":
    main()
