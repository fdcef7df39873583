"""``"rank"``: the paper's LLM-ranker baseline (Figure 4)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from langchain_core.messages import AIMessage, BaseMessage

from langchain_moa.aggregation import (
    Aggregated,
    AggregationJob,
    AggregatorCall,
    Steps,
    StepwiseStrategy,
)
from langchain_moa.prompts import DEFAULT_RANKER_PROMPT


@dataclass(frozen=True)
class Rank(StepwiseStrategy):
    """The aggregator only picks the best proposal, which is the answer word for word.

    The ranker reads every proposal under the ranking prompt (the ensemble's
    ``ranker_prompt``) and answers with a number; the first number that names a
    proposal wins, else the first proposal is taken. The choice is recorded in
    ``response_metadata["ranker"]``. The answer comes in one piece, and the
    ranker cannot call tools or follow a schema.
    """

    name: ClassVar[str] = "rank"
    record_key: ClassVar[str] = "ranker"

    def check_call(self, *, tools: bool, structured: bool) -> None:
        """Refuse tools and schemas: the answer is a proposal as it is."""
        if tools or structured:
            msg = (
                'aggregation="rank" picks a proposal as is: it cannot call tools or follow a schema'
            )
            raise ValueError(msg)

    def steps(self, job: AggregationJob) -> Steps:
        """One call: every proposal under the ranking prompt; its choice is the answer."""
        references = job.proposals()
        prompt = job.settings.ranker_prompt or DEFAULT_RANKER_PROMPT
        messages = job.conversation(references, prompt)
        done = yield AggregatorCall(messages, references=len(references), stream=False)
        return Aggregated.of(done, ranked_choice(references, done.answer))


def ranked_choice(texts: list[str], ranking: BaseMessage) -> AIMessage:
    """The proposal the ranker chose, as the answer (with the ranker's usage).

    The first number in the ranker's reply that names a proposal wins; if none
    does, the first proposal is taken and ``ranker_parsed`` is false.
    """
    numbers = [int(n) for n in re.findall(r"\d+", ranking.text)]
    choice = next((n for n in numbers if 1 <= n <= len(texts)), None)
    return AIMessage(
        content=texts[(choice or 1) - 1],
        id=ranking.id,
        usage_metadata=ranking.usage_metadata if isinstance(ranking, AIMessage) else None,
        response_metadata={
            **ranking.response_metadata,
            "ranker": {"choice": choice or 1, "parsed": choice is not None, "output": ranking.text},
        },
    )
