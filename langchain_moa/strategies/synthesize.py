"""``"synthesize"``: the paper's aggregate-and-synthesize step (the default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from langchain_moa.aggregation import (
    Aggregated,
    AggregationJob,
    AggregatorCall,
    Steps,
    StepwiseStrategy,
)


@dataclass(frozen=True)
class Synthesize(StepwiseStrategy):
    """The aggregator reads every proposal of the last layer and writes a new answer.

    Mixture-of-Agents as published (Wang et al., 2024): one call with the
    aggregate-and-synthesize prompt and every successful proposal as a
    reference, streamed to the caller when the caller streams. Tools and a
    schema apply to that call.
    """

    name: ClassVar[str] = "synthesize"

    def steps(self, job: AggregationJob) -> Steps:
        """One call: every proposal under the aggregator prompt."""
        references = job.proposals()
        messages = job.conversation(references, job.settings.prompt)
        done = yield AggregatorCall(messages, references=len(references))
        return Aggregated.of(done)
