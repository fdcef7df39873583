"""``"staircase"``: the aggregator writes while the last layer's proposers are still writing.

Staircase streaming (Together/Duke, 2025): instead of waiting for complete
proposals, the aggregator works in stairs. Stair ``k`` starts once every live
proposer of the last layer has streamed ``k x chunk_tokens`` tokens, finished or
failed (or, with ``stair_wait``, once ``min_proposers`` have and the others are
late). It reads the paper's prompt with each proposal as written so far (an
unfinished one marked as still being written), plus its own answer so far and
the instruction to continue it seamlessly (see ``prompts.continuation_block``),
all in the system message, so it works with any chat API. A stair streams at
most ``stair_tokens`` tokens, cut at a word boundary, straight to the caller;
once every proposal is complete the final stair writes the rest, uncapped.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.runnables import Runnable

from langchain_moa.aggregation import (
    Aggregated,
    AggregationJob,
    AggregationStrategy,
    AggregatorCall,
    Completed,
    elapsed_since,
    summed_usage,
)
from langchain_moa.calls import (
    EmptyAnswerError,
    IncompleteAnswerError,
    InnerCall,
    StreamBrokenError,
)
from langchain_moa.notes import stopped_after
from langchain_moa.prompts import continuation_block, fit_references, mark_unfinished
from langchain_moa.state import Proposal
from langchain_moa.strategies.synthesize import Synthesize

_LAST_SPACE = re.compile(r"\s(?=\S*$)")
_NO_SPACE_BEFORE = frozenset(",.;:!?)]}%'\"")


@dataclass(frozen=True)
class Staircase(AggregationStrategy):
    """The aggregator starts on the proposals' first chunks and writes in stairs.

    Its first token comes after the first ``chunk_tokens`` tokens of every
    proposer instead of after the slowest complete proposal. The price: each
    stair re-reads the references and the answer so far (more prompt tokens),
    and the answer's start is written from partial proposals. Each stair is an
    inner run ``aggregator · stair k``; the usage sums every stair, and
    ``response_metadata["staircase"]["stairs"]`` records each stair's
    references' lengths, tokens emitted and wait. Streamed chunks are counted
    as tokens (OpenAI-compatible servers send about one token per chunk).

    With tools or a schema bound, the call falls back to ``"synthesize"`` (the
    last layer runs to the end first) and ``response_metadata["staircase"]``
    says so.

    Attributes:
        chunk_tokens: Tokens every live proposer adds per stair.
        stair_tokens: Most tokens a stair writes before the proposals are
            complete (then the final stair writes the rest).
        stair_wait: Seconds a stair waits for late proposers once
            ``min_proposers`` have delivered (``None``: wait for every one).
        min_proposers: Proposers that must have delivered before ``stair_wait``
            applies (``None``: the ensemble's ``min_proposers``).
    """

    name: ClassVar[str] = "staircase"
    record_key: ClassVar[str] = "staircase"
    runs_last_layer: ClassVar[bool] = True

    chunk_tokens: int = 32
    stair_tokens: int = 48
    stair_wait: float | None = None
    min_proposers: int | None = None

    def __post_init__(self) -> None:
        """Check the settings.

        Raises:
            ValueError: A count below 1 or a negative or non-finite wait.
        """
        for name in ("chunk_tokens", "stair_tokens", "min_proposers"):
            value = getattr(self, name)
            if value is None and name == "min_proposers":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"Staircase({name}=...) must be an int of at least 1, got {value!r}"
                raise ValueError(msg)
        wait = self.stair_wait
        if wait is not None and (
            isinstance(wait, bool)
            or not isinstance(wait, (int, float))
            or not 0 <= wait < float("inf")
        ):
            msg = f"Staircase(stair_wait=...) must be a finite number >= 0 or None, got {wait!r}"
            raise ValueError(msg)

    async def aaggregate(self, job: AggregationJob) -> Aggregated:
        """Climb the stairs (or, with tools or a schema bound or the layer skipped, synthesize)."""
        if job.layer is None and stopped_after(job.state) is not None:
            # The budget stopped the run before the last layer: synthesize what there is.
            return await Synthesize().aaggregate(job)
        if job.layer is None:
            msg = "the staircase needs the last proposer layer (build the graph with it)"
            raise RuntimeError(msg)
        if job.constrained:
            return await self._synthesized(job)
        return await _Climb(self, job).run()

    async def _synthesized(self, job: AggregationJob) -> Aggregated:
        """Tools or a schema: the last layer runs to the end, then one synthesis."""
        layer = job.layer
        assert layer is not None
        layer.open()
        proposals = await asyncio.gather(*(layer.run(i) for i in range(len(layer.labels))))
        job.add_proposals(proposals)
        layer.close(proposals)
        done = await Synthesize().aaggregate(job)
        bound = "tools are bound" if job.options.tools else "a schema is bound"
        record = {"fallback": "synthesize", "reason": f"{bound}: the answer is written in one call"}
        metadata = {**done.answer.response_metadata, self.record_key: record}
        return replace(done, answer=done.answer.model_copy(update={"response_metadata": metadata}))


class _Draft:
    """One proposal as it is being written."""

    def __init__(self) -> None:
        self.text = ""
        self.tokens = 0
        self.finished = False
        self.failed = False

    @property
    def complete(self) -> bool:
        """Finished or failed: it will not grow any more."""
        return self.finished or self.failed

    def add(self, chunk: AIMessageChunk) -> None:
        """Take one streamed chunk."""
        if chunk.text:
            self.text += chunk.text
            self.tokens += 1

    def end(self, proposal: Proposal) -> None:
        """Take the proposer's record: its full text, or its failure."""
        self.finished, self.failed = proposal.ok, not proposal.ok
        if proposal.ok:
            self.text = proposal.text or ""


class _Climb:
    """One run of the staircase: the last layer's proposers streaming, and the stairs."""

    def __init__(self, strategy: Staircase, job: AggregationJob) -> None:
        self.strategy = strategy
        self.job = job
        self.layer = job.layer
        assert self.layer is not None
        self.drafts = [_Draft() for _ in self.layer.labels]
        self.changed = asyncio.Event()
        self.answer = ""
        self.tokens = 0
        self.done: list[Completed] = []
        self.stairs: list[dict[str, Any]] = []
        self.budget, self.limit_keys = _budget(job)

    async def run(self) -> Aggregated:
        """Stream the proposers, climb the stairs, record everything."""
        self.layer.open()  # type: ignore[union-attr]
        tasks = [asyncio.ensure_future(self._propose(i)) for i in range(len(self.drafts))]
        try:
            await self._climb(tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self._finished()

    async def _propose(self, index: int) -> Proposal:
        draft = self.drafts[index]

        def on_chunk(chunk: AIMessageChunk) -> None:
            draft.add(chunk)
            self.changed.set()

        try:
            proposal = await self.layer.run(index, on_chunk)  # type: ignore[union-attr]
        except BaseException:
            draft.failed = True
            self.changed.set()
            raise
        draft.end(proposal)
        self.changed.set()
        return proposal

    async def _climb(self, tasks: list[asyncio.Future[Proposal]]) -> None:
        number = 0
        while True:
            number += 1
            waited = await self._wait_for(number, tasks)
            final = all(d.complete for d in self.drafts)
            if final:
                self._close(tasks)
            await self._stair(number, final, waited)
            if final:
                return
            if self.budget is not None and self.tokens >= self.budget:
                await asyncio.wait(tasks)
                self._close(tasks)
                return

    def _close(self, tasks: list[asyncio.Future[Proposal]]) -> None:
        """Record the layer's proposals and check its quorum."""
        proposals = [task.result() for task in tasks]
        self.job.add_proposals(proposals)
        self.layer.close(proposals)  # type: ignore[union-attr]

    async def _wait_for(self, number: int, tasks: list[asyncio.Future[Proposal]]) -> float:
        """Wait until stair ``number`` may start; return the seconds waited."""
        threshold = number * self.strategy.chunk_tokens
        wait = self.strategy.stair_wait
        needed = self.strategy.min_proposers or self.job.settings.min_proposers
        started = time.monotonic()
        quorum_since: float | None = None
        while True:
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            if all(d.complete or d.tokens >= threshold for d in self.drafts):
                break
            timeout = None
            if wait is not None:
                delivered = sum(
                    d.finished or (not d.failed and d.tokens >= threshold) for d in self.drafts
                )
                if delivered >= needed:
                    quorum_since = quorum_since or time.monotonic()
                    timeout = wait - (time.monotonic() - quorum_since)
                    if timeout <= 0:
                        break
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), timeout)
            except asyncio.TimeoutError:
                continue
        return round(time.monotonic() - started, 4)

    async def _stair(self, number: int, final: bool, waited: float) -> None:
        job, settings = self.job, self.job.settings
        # A snapshot: the drafts go on growing while the stair is written.
        drafts = [(d.text, d.finished) for d in self.drafts if not d.failed and d.text]
        fitted = fit_references([text for text, _ in drafts], settings.max_reference_chars)
        references = [
            text if finished else mark_unfinished(text)
            for (_, finished), text in zip(drafts, fitted, strict=True)
        ]
        appended = continuation_block(self.answer) if self.answer else None
        messages = job.conversation(references, settings.prompt, appended=appended, fit=False)
        cap = None if final else self.strategy.stair_tokens
        reader = _StairReader(job, self.answer, cap)
        request = AggregatorCall(
            messages,
            references=len(references),
            step=f"stair {number}",
            announce=number == 1,
            overrides=self._limits(cap),
            metadata={"moa_stair": number},
            consume=reader.consume,
            answered=self.answer,
        )
        done = await job.acomplete(request)
        self.done.append(done)
        self.answer += reader.text
        self.tokens += reader.tokens
        self.stairs.append(
            {
                "stair": number,
                "final": final,
                "references": [len(text) for text, _ in drafts],
                "unfinished": sum(not finished for _, finished in drafts),
                "answer_so_far": len(self.answer) - len(reader.text),
                "tokens": reader.tokens,
                "wait_s": waited,
                "latency_s": elapsed_since(done.call.started),
            }
        )

    def _limits(self, cap: int | None) -> dict[str, int]:
        """The stair's token limit: its cap, within what is left of the caller's budget."""
        left = None if self.budget is None else max(1, self.budget - self.tokens)
        limits = [n for n in (cap, left) if n is not None]
        if not limits:
            return {}
        return dict.fromkeys(self.limit_keys, min(limits))

    def _finished(self) -> Aggregated:
        last = self.done[-1]
        staircase = {
            "chunk_tokens": self.strategy.chunk_tokens,
            "stair_tokens": self.strategy.stair_tokens,
            "stair_wait": self.strategy.stair_wait,
            "stairs": self.stairs,
        }
        metadata = {**last.answer.response_metadata, "staircase": staircase}
        answer = AIMessage(
            content=self.answer,
            id=last.answer.id,
            usage_metadata=summed_usage([d.usage for d in self.done]),
            response_metadata=metadata,
        )
        return Aggregated(
            answer=answer,
            model=last.call.model,
            started=self.done[0].call.started,
            attempts=sum(max(d.call.limits.attempts, 1) for d in self.done),
            streamed=self.job.streams,
        )


def _budget(job: AggregationJob) -> tuple[int | None, tuple[str, ...]]:
    """The caller's token budget for the whole answer, and the arguments that carry it."""
    kwargs = {
        **job.settings.call_kwargs,
        **job.settings.aggregator_call_kwargs,
        **job.options.aggregator_kwargs,
    }
    keys = tuple(k for k in ("max_tokens", "max_completion_tokens") if kwargs.get(k) is not None)
    budget = min((int(kwargs[k]) for k in keys), default=None)
    return budget, keys or ("max_tokens",)


class _StairReader:
    """Reads one stair's stream: passes whole words on, at most ``cap`` tokens.

    Text is passed on up to its last whitespace, so a stair cut by its token
    limit ends at a word boundary: the unfinished word is dropped (the next
    stair writes it). The first words join the answer so far with one space.
    """

    def __init__(self, job: AggregationJob, answered: str, cap: int | None) -> None:
        self.job = job
        self.answered = answered
        self.cap = cap
        self.text = ""
        self.tokens = 0
        self._pending = ""
        self._pending_tokens = 0
        self._seen = 0

    async def consume(self, runnable: Runnable, call: InnerCall) -> BaseMessage:
        """Stream the stair (one attempt); return its message (this stair's text)."""
        self.text, self.tokens, self._pending, self._pending_tokens, self._seen = "", 0, "", 0, 0
        stream: AsyncIterator[AIMessageChunk] = runnable.astream(call.messages, call.config)
        total: AIMessageChunk | None = None
        try:
            cut = False
            async for chunk in stream:
                if chunk.text and self.cap is not None and self._seen >= self.cap:
                    cut = True  # the provider went past its max_tokens
                    break
                total = chunk if total is None else total + chunk
                if chunk.text:
                    call.limits.first_token.set()
                    self._feed(chunk.text)
            return self._end(total, cut)
        except Exception as error:
            if self.text:
                raise StreamBrokenError(error, self.answered + self.text) from error
            raise
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    def _feed(self, text: str) -> None:
        self._seen += 1
        self._pending += text
        self._pending_tokens += 1
        space = _LAST_SPACE.search(self._pending)
        if space is not None:
            self._pass_on(self._pending[: space.end()], self._pending[space.end() :])

    def _pass_on(self, text: str, rest: str) -> None:
        carried = 1 if rest else 0
        self.tokens += self._pending_tokens - carried
        self._pending, self._pending_tokens = rest, carried
        if not self.text and not self.answered:
            text = text.lstrip()
        elif not self.text:
            text = _joined(self.answered, text)
        if text:
            self.text += text
            self.job.emit(text)

    def _end(self, total: AIMessageChunk | None, cut: bool) -> BaseMessage:
        if total is None:
            msg = "the provider's stream ended without any chunk"
            raise EmptyAnswerError(msg)
        metadata = total.response_metadata
        finish = metadata.get("finish_reason")
        if not cut and metadata.get("model_provider") == "openai" and not finish:
            msg = "the provider's answer ended without a finish_reason (truncated?)"
            raise IncompleteAnswerError(msg)
        limited = cut or finish == "length"
        if self._pending and not (limited and self.cap is not None):
            self._pass_on(self._pending, "")
        if not self.text and not self.answered:
            msg = "the provider returned an empty answer (no content, no tool call)"
            raise EmptyAnswerError(msg)
        return AIMessage(
            content=self.text,
            id=total.id,
            usage_metadata=total.usage_metadata,
            response_metadata=metadata,
        )


def _joined(answered: str, text: str) -> str:
    """``text`` as it continues ``answered``: one space between words, none doubled."""
    if not answered or not text:
        return text
    if answered[-1].isspace():
        return text.lstrip(" \t")
    if text[0].isspace() or text[0] in _NO_SPACE_BEFORE:
        return text
    return " " + text
