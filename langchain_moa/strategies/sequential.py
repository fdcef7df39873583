"""``"sequential"``: Self-MoA-Seq, a synthesis refined a window of proposals at a time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from langchain_core.messages import AIMessage

from langchain_moa.aggregation import (
    Aggregated,
    AggregationJob,
    AggregatorCall,
    Completed,
    Steps,
    StepwiseStrategy,
    elapsed_since,
    summed_usage,
)
from langchain_moa.prompts import DEFAULT_SEQUENTIAL_PROMPT


@dataclass(frozen=True)
class Sequential(StepwiseStrategy):
    """The aggregator reads the proposals a window at a time (Self-MoA-Seq, Li et al., 2025).

    Step 1 synthesizes the first ``window`` proposals with the aggregator prompt.
    Each further step reads the current synthesis (reference 1) and the next
    ``window`` proposals under ``prompt``, which asks to keep what is best in the
    synthesis, until every proposal has been read. So the aggregator's context
    stays the same size however many proposals there are. The last step writes
    the answer: it streams, and it takes the caller's tools or schema; earlier
    steps are drafts (the tools visible, not callable). Each step is an inner
    run ``aggregator · step k``; the usage sums every step and
    ``response_metadata["sequential"]`` records them.

    Attributes:
        window: Proposals read per step (at least 1).
        prompt: The prompt of the steps after the first.
    """

    name: ClassVar[str] = "sequential"
    record_key: ClassVar[str] = "sequential"

    window: int = 3
    prompt: str = DEFAULT_SEQUENTIAL_PROMPT

    def __post_init__(self) -> None:
        """Check the settings.

        Raises:
            ValueError: A window below 1 or an empty prompt.
        """
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            msg = f"Sequential(window=...) must be an int of at least 1, got {self.window!r}"
            raise ValueError(msg)
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            msg = "Sequential(prompt=...) must be a non-empty string"
            raise ValueError(msg)

    def steps(self, job: AggregationJob) -> Steps:
        """Synthesize the first window, then refine with each next window."""
        proposals = job.proposals()
        windows = [
            list(range(start, min(start + self.window, len(proposals))))
            for start in range(0, len(proposals), self.window)
        ] or [[]]
        done: list[Completed] = []
        records: list[dict[str, Any]] = []
        synthesis: str | None = None
        for number, window in enumerate(windows, 1):
            last = number == len(windows)
            texts = [proposals[i] for i in window]
            if synthesis is None:
                references, prompt = texts, job.settings.prompt
            else:
                references, prompt = [synthesis, *texts], self.prompt
            step = yield AggregatorCall(
                job.conversation(references, prompt),
                references=len(references),
                step=f"step {number}" if len(windows) > 1 else "",
                final=last,
                announce=number == 1,
                metadata={"moa_step": number},
            )
            done.append(step)
            synthesis = step.answer.text
            records.append(
                {
                    "step": number,
                    "proposals": [i + 1 for i in window],
                    "references": [len(r) for r in references],
                    "latency_s": elapsed_since(step.call.started),
                    "usage": step.usage,
                }
            )
        return self._finished(done, records)

    def _finished(self, done: list[Completed], records: list[dict[str, Any]]) -> Aggregated:
        last = done[-1]
        answer = last.answer
        metadata = {
            **answer.response_metadata,
            "sequential": {"window": self.window, "steps": records},
        }
        usage = summed_usage([step.usage for step in done])
        if isinstance(answer, AIMessage):
            answer = answer.model_copy(
                update={"usage_metadata": usage, "response_metadata": metadata}
            )
        else:
            answer = answer.model_copy(update={"response_metadata": metadata})
        return Aggregated(
            answer=answer,
            model=last.call.model,
            started=done[0].call.started,
            attempts=sum(max(step.call.limits.attempts, 1) for step in done),
            streamed=last.streamed,
        )
