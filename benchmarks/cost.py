"""8. Cost: tokens and dollars per answer of the paper's MoA, and what the cost controls save.

The paper's MoA shape (6 proposers, 3 layers) runs on the simulator with
realistic sizes: a question of ``cost_prompt_tokens`` tokens and answers of
``cost_answer_tokens`` tokens (the simulator's ``answer_tokens`` knob; a token
is a word). Dollars use the public per-token prices of a named line-up, read
from ``genai-prices``: OpenAI's gpt-4o-mini, gpt-4.1-mini, gpt-4.1-nano,
gpt-4o, gpt-4.1 and o4-mini propose, gpt-4o aggregates. Each configuration is
compared with plain MoA in the same run:

* ``select_references=3`` with ``"diverse"`` selection (hash embeddings);
* early stop on an agreeing set (every answer embeds to the same vector);
* budgets of half and of 0.6 of what plain MoA cost.

The models count prompt tokens as the simulator does (a word is a token), the
way a real ``ChatOpenAI`` counts with its tokenizer, so a budget's estimate is
off only by the completion caps (``max_tokens`` = 1.28 x the answers' length).

Token counts are deterministic, so one answer per configuration is measured.
Whether quality holds is not measured here (see the README's Cost section).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_core.messages import AIMessage, BaseMessage, convert_to_openai_messages
from langchain_openai import ChatOpenAI

from benchmarks.common import Figure, Section, Simulator, Target
from benchmarks.sizes import Sizes
from langchain_moa import MoAChatModel
from langchain_moa.agreement import Agreement
from langchain_moa.budget import BudgetExceededError
from langchain_moa.cost import public_prices
from langchain_moa.testing import ModelBehavior
from langchain_moa.testing.answers import prompt_tokens

PROVIDER = "openai"
PROPOSERS = ("gpt-4o-mini", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o", "gpt-4.1", "o4-mini")
AGGREGATOR = "gpt-4o"
LAYERS = 3
CAP_OVER_ANSWER = 1.28
"""``max_tokens`` of every call ÷ the answers' length (512 for 400-token answers)."""
SELECT_TARGET = Target(0.6)
_BUDGET_TARGETS = {"budget_half": Target(0.5), "budget_0.6": Target(0.6)}


class SameVector(Embeddings):
    """Every text embeds to one vector: a set of answers that agree."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One and the same vector per text."""
        return [[1.0, 0.0] for _ in texts]

    def embed_query(self, text: str) -> list[float]:
        """The same vector."""
        return [1.0, 0.0]


def _question(tokens: int) -> str:
    words = ["Explain", "why", "the", "sky", "is", "blue", "in", "plain", "words:"]
    filler = ["consider", "scattering", "of", "sunlight", "by", "air", "molecules", "and"]
    while len(words) < tokens:
        words.append(filler[len(words) % len(filler)])
    return " ".join(words[:tokens])


class SimulatorCounted(ChatOpenAI):
    """A simulator model whose token counter is the simulator's (a word is a token)."""

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence | None = None
    ) -> int:
        """Prompt tokens of ``messages`` as the simulator will report them."""
        return prompt_tokens(convert_to_openai_messages(messages))


def _chat(sim: Simulator, model: str, name: str) -> ChatOpenAI:
    return SimulatorCounted(
        base_url=f"http://127.0.0.1:{sim.port}/v1",
        api_key="simulator",
        model=model,
        name=name,
        max_retries=0,
    )


def _ensemble(sim: Simulator, prefix: str, max_tokens: int, **fields: Any) -> MoAChatModel:
    names = list(PROPOSERS)
    prices = public_prices([*dict.fromkeys([*names, AGGREGATOR])], PROVIDER)
    proposers = [_chat(sim, f"{prefix}{i}:{name}", name) for i, name in enumerate(names)]
    aggregator = _chat(sim, f"{prefix}agg:{AGGREGATOR}", AGGREGATOR)
    return MoAChatModel(
        proposers=proposers,
        aggregator=aggregator,
        layers=LAYERS,
        max_tokens=max_tokens,
        prices=prices,
        **fields,
    )


def _measure(llm: MoAChatModel, question: str) -> dict[str, Any]:
    try:
        answer = llm.invoke(question)
    except BudgetExceededError as error:
        # Refused before any provider was called: nothing spent.
        return {"raised": str(error), "input_tokens": 0, "output_tokens": 0, "usd": 0.0}
    assert isinstance(answer, AIMessage)
    usage = answer.usage_metadata or {}
    meta = answer.response_metadata
    return {
        "input_tokens": usage.get("input_tokens", 0),
        "output_tokens": usage.get("output_tokens", 0),
        "usd": meta["cost"]["total_usd"],
        "proposer_layers_run": sum(1 for layer in meta["proposals"] if layer),
        "references_read_by_aggregator": meta["aggregator"]["text"].split(" references ")[0],
        "budget": meta.get("budget"),
    }


def run(sim: Simulator, sizes: Sizes) -> Section:
    """Measure tokens and dollars per answer of plain MoA and of each cost control.

    Args:
        sim: The simulator.
        sizes: The run's sizes.

    Returns:
        The section; the raw counts are in its details.
    """
    behavior = ModelBehavior(answer_tokens=sizes.cost_answer_tokens)
    for prefix in ("plain", "select", "early", "half", "sixty"):
        for i in range(len(PROPOSERS)):
            sim.set_behavior(f"{prefix}{i}:{PROPOSERS[i]}", behavior)
        sim.set_behavior(f"{prefix}agg:{AGGREGATOR}", behavior)
    question = _question(sizes.cost_prompt_tokens)
    cap = round(sizes.cost_answer_tokens * CAP_OVER_ANSWER)
    plain = _measure(_ensemble(sim, "plain", cap), question)
    runs = {
        "plain": plain,
        "select_references_3": _measure(
            _ensemble(
                sim,
                "select",
                cap,
                select_references=3,
                selection_embeddings=DeterministicFakeEmbedding(size=64),
            ),
            question,
        ),
        "early_stop": _measure(
            _ensemble(
                sim, "early", cap, early_stop=Agreement(threshold=0.9, embeddings=SameVector())
            ),
            question,
        ),
        "budget_half": _measure(
            _ensemble(sim, "half", cap, max_cost_usd=plain["usd"] * 0.5), question
        ),
        "budget_0.6": _measure(
            _ensemble(sim, "sixty", cap, max_cost_usd=plain["usd"] * 0.6), question
        ),
    }
    labels = {
        "select_references_3": "select_references=3 (diverse)",
        "early_stop": "early stop on an agreeing set",
        "budget_half": "max_cost_usd = 0.5 x plain MoA's cost",
        "budget_0.6": "max_cost_usd = 0.6 x plain MoA's cost",
    }
    figures = [
        Figure(
            "plain_input_tokens",
            "plain MoA: input tokens per answer",
            plain["input_tokens"],
            "tokens",
        ),
        Figure(
            "plain_output_tokens",
            "plain MoA: output tokens per answer",
            plain["output_tokens"],
            "tokens",
        ),
        Figure("plain_usd", "plain MoA: dollars per answer", plain["usd"], "$"),
    ]
    for key, label in labels.items():
        measured = runs[key]
        figures.append(
            Figure(
                f"{key}_input_tokens_ratio",
                f"{label}: input tokens ÷ plain MoA's",
                measured["input_tokens"] / plain["input_tokens"],
                compared_to="plain MoA, same run",
                baseline=1.0,
                target=SELECT_TARGET if key == "select_references_3" else None,
            )
        )
        figures.append(
            Figure(
                f"{key}_usd_ratio",
                f"{label}: dollars ÷ plain MoA's",
                measured["usd"] / plain["usd"],
                compared_to="plain MoA, same run",
                baseline=1.0,
                target=_BUDGET_TARGETS.get(key),
            )
        )
    params = {
        "proposers": list(PROPOSERS),
        "aggregator": AGGREGATOR,
        "provider_prices": PROVIDER,
        "layers": LAYERS,
        "max_tokens": cap,
        "prompt_tokens": sizes.cost_prompt_tokens,
        "answer_tokens": sizes.cost_answer_tokens,
    }
    return Section("cost", "8. Cost per answer", params, figures, runs)
