"""The seam between the ensemble and the way its final answer is written.

An aggregation strategy is one object that decides, for the last step of a
Mixture-of-Agents run:

* which references the aggregator reads: every proposal at once
  (``"synthesize"``), a window at a time (``"sequential"``), or as the proposals
  are being written (``"staircase"``);
* whether and how the answer streams to the caller;
* whether it can take tools or a schema (:meth:`AggregationStrategy.check_call`
  refuses what it cannot do; a strategy may also fall back to another);
* how the answer is finished and recorded (:class:`Aggregated`, and the
  strategy's own entry of ``response_metadata`` under ``record_key``).

The graph's ``aggregate`` node builds an :class:`AggregationJob` for each run and
hands it to the strategy. The job makes the aggregator's calls with the
ensemble's machinery (retries, timeouts, the concurrency bound, the fallback
aggregator, tracing, streaming to the caller), so a strategy only says what to
ask and what to do with the answers. The built-in strategies are in
``langchain_moa.strategies``, one file each.

Strategies whose calls happen one after another subclass
:class:`StepwiseStrategy` and write their steps once, as a generator; it runs on
the sync path (each call on the background loop or a worker thread, as any inner
call) and on the async path alike. Strategies that run calls concurrently
subclass :class:`AggregationStrategy` and write :meth:`~AggregationStrategy.aaggregate`;
a sync caller runs it on the background event loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Generator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.config import get_stream_writer

from langchain_moa.calls import BackgroundModels, InnerCall, StreamBrokenError, inner_config
from langchain_moa.errors import AggregatorFailedError, mask_exception
from langchain_moa.events import AggregationStarted, AnswerToken, event_to_dict
from langchain_moa.inner_models import bind_tools, model_label
from langchain_moa.notes import reference_proposals
from langchain_moa.prompts import append_to_system, fit_references, inject_references
from langchain_moa.resilience import (
    AggregatorTimeoutError,
    CallLimits,
    RetryPolicy,
    RunCancelledError,
    call_async,
    call_sync,
)
from langchain_moa.state import MoAState, Proposal
from langchain_moa.structured_output import constrained_aggregator

if TYPE_CHECKING:
    from langchain_moa.engine import EngineSettings, RunOptions

_LONG_TEXT = 64


# -- what a strategy asks, and what it gets back --------------------------------------


Consume = Callable[[Runnable, InnerCall], Awaitable[BaseMessage]]
"""A custom reading of one call: gets the runnable to call and the call (its
messages, config, limits), returns the answer. For streamed calls that handle
their chunks themselves (a staircase stair)."""


@dataclass(frozen=True)
class AggregatorCall:
    """One call a strategy asks of the aggregator.

    Attributes:
        messages: What the aggregator reads.
        references: How many references ``messages`` carry (progress event).
        step: Names the call in its traced run (``"aggregator · {step} · {model}"``);
            empty for a strategy's only call (``"aggregator · {model}"``).
        final: It writes the answer: the caller's tools, schema and arguments
            apply. Otherwise the call is a draft: the ensemble's generation
            arguments only, and the tools visible but not callable.
        stream: Stream its tokens to the caller (when the caller streams).
        announce: Send the ``aggregation_started`` progress event for it.
        overrides: Call arguments that win over every other (``max_tokens``).
        metadata: Added to the inner run's metadata.
        consume: A custom reading of the call (see :data:`Consume`).
        answered: The answer's text the caller has already received; a
            failure then carries it as ``partial_text``.
    """

    messages: list[BaseMessage]
    references: int
    step: str = ""
    final: bool = True
    stream: bool = True
    announce: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    consume: Consume | None = None
    answered: str = ""


@dataclass(frozen=True)
class Completed:
    """One aggregator call that answered.

    Attributes:
        answer: Its answer.
        call: The call (model, start time, attempts).
        streamed: Whether its tokens went to the caller as they came.
    """

    answer: BaseMessage
    call: InnerCall
    streamed: bool

    @property
    def usage(self) -> UsageMetadata | None:
        """The call's reported usage, if any."""
        return getattr(self.answer, "usage_metadata", None)


@dataclass(frozen=True)
class Aggregated:
    """A strategy's result: the answer and what the record of the aggregation needs.

    Attributes:
        answer: The answer: content, tool calls, the usage of every aggregator
            call, and the strategy's entry of ``response_metadata`` under its
            ``record_key``.
        model: The aggregator that wrote (the end of) the answer.
        started: When the first aggregator call started (``perf_counter``).
        attempts: Aggregator calls made, retries included.
        streamed: Whether the answer went to the caller token by token (else
            it is sent in one piece when the caller streams).
    """

    answer: BaseMessage
    model: Runnable
    started: float
    attempts: int
    streamed: bool

    @classmethod
    def of(cls, done: Completed, answer: BaseMessage | None = None) -> Aggregated:
        """The result of a strategy whose answer is one call's (or made from it)."""
        return cls(
            answer=done.answer if answer is None else answer,
            model=done.call.model,
            started=done.call.started,
            attempts=max(done.call.limits.attempts, 1),
            streamed=done.streamed,
        )


def summed_usage(usages: Sequence[UsageMetadata | None]) -> UsageMetadata | None:
    """The sum of the reported usages (``None`` if none was reported)."""
    total: UsageMetadata | None = None
    for usage in usages:
        if usage:
            total = usage if total is None else add_usage(total, usage)
    return total


class FirstToken:
    """A stream writer of answer tokens that notes when the first visible chunk went out."""

    def __init__(self, write: Callable[[Any], None]) -> None:
        self._write = write
        self.at: float | None = None  # time.time() of the first visible chunk

    def __call__(self, token: AnswerToken) -> None:
        """Write ``token``, noting the time if it is the first visible one."""
        chunk = token.chunk
        if self.at is None and (chunk.content or chunk.tool_call_chunks):
            self.at = time.time()
        self._write(token)


# -- the last proposer layer, for strategies that run it themselves ------------------


class ProposerLayer(Protocol):
    """The last proposer layer, run by a strategy inside the ``aggregate`` node.

    Its proposers keep their records, progress events, timeouts, retries, the
    layer deadline and the concurrency bound, as in a layer of the graph.
    """

    number: int

    @property
    def labels(self) -> list[str]:
        """The proposers' names, in order."""

    def open(self) -> None:
        """Start the layer: the ``layer_started`` event and its deadline watch."""

    async def run(
        self, index: int, on_chunk: Callable[[AIMessageChunk], None] | None = None
    ) -> Proposal:
        """Run proposer ``index``, streamed to ``on_chunk`` if given; return its record."""

    def close(self, proposals: Sequence[Proposal]) -> None:
        """End the layer: ``layer_finished``, and the quorum (``ProposersFailedError``)."""


# -- the job: one run's aggregation -----------------------------------------------------


class AggregationJob:
    """One run's aggregation, as a strategy sees it.

    It knows the conversation, the proposals, the caller's options and the
    ensemble's settings, and makes the aggregator's calls: each with retries
    and timeouts, through the fallback aggregator if the aggregator fails, as
    an inner traced run, streamed to the caller when asked.
    """

    def __init__(
        self,
        *,
        state: MoAState,
        config: RunnableConfig,
        options: RunOptions,
        settings: EngineSettings,
        last_layer: int,
        aggregator: Runnable,
        background: BackgroundModels,
        layer: ProposerLayer | None = None,
    ) -> None:
        """Build the job of one run (the ``aggregate`` node does).

        Args:
            state: The graph's state (conversation, proposals so far).
            config: The node's config.
            options: The run's options.
            settings: The ensemble's settings.
            last_layer: The number of the last proposer layer.
            aggregator: The aggregator model.
            background: Model copies for the sync path's background loop.
            layer: The last proposer layer, if the strategy runs it itself.
        """
        self.state = state
        self.config = config
        self.options = options
        self.settings = settings
        self.last_layer = last_layer
        self.aggregator = aggregator
        self.background = background
        self.layer = layer
        self.failures: list[tuple[str, Exception]] = []
        self.new_proposals: list[Proposal] = []
        self._writer = get_stream_writer()
        self._answer_writer = FirstToken(self._writer)
        self._current = 0

    # -- what the strategy reads

    @property
    def streams(self) -> bool:
        """Whether the caller streams and the answer may go token by token."""
        return self.options.stream_answer and self.options.structured is None

    @property
    def constrained(self) -> bool:
        """Whether the caller bound tools or a schema."""
        return bool(self.options.tools) or self.options.structured is not None

    @property
    def first_token_at(self) -> float | None:
        """When the answer's first visible token went to the caller (``time.time()``)."""
        return self._answer_writer.at

    def proposals(self) -> list[str]:
        """The last proposer layer's answers that go on as references, in order (not fitted).

        The successful ones, less those reference selection left out (of the
        last layer that ran, if the run stopped early: ``notes.reference_proposals``).
        """
        return [p.text for p in reference_proposals(self.state, self.last_layer)]  # type: ignore[misc]

    def conversation(
        self,
        references: Sequence[str],
        prompt: str,
        *,
        appended: str | None = None,
        fit: bool = True,
    ) -> list[BaseMessage]:
        """The caller's conversation with ``references`` under ``prompt``.

        The references are fitted to ``max_reference_chars`` (unless ``fit`` is
        false: the strategy fitted them) and laid out in the ensemble's
        ``reference_format``; ``appended`` goes at the end of the system
        message, after a blank line.
        """
        budget = self.settings.max_reference_chars if fit else None
        fitted = fit_references(references, budget)
        messages = inject_references(
            self.state["messages"],
            fitted,
            prompt,
            reference_format=self.settings.reference_format,
        )
        return messages if appended is None else append_to_system(messages, appended)

    def add_proposals(self, proposals: Sequence[Proposal]) -> None:
        """Record proposals the strategy made (the last layer's, when it runs it)."""
        self.new_proposals.extend(proposals)
        known = list(self.state.get("proposals", []))
        self.state = {**self.state, "proposals": [*known, *proposals]}  # type: ignore[typeddict-item]

    # -- what the strategy does

    def emit(self, text: str) -> None:
        """Send ``text`` to the caller as part of the answer (if the caller streams)."""
        if self.streams and text:
            self._answer_writer(AnswerToken(AIMessageChunk(content=text)))

    def write(self, event: Any) -> None:
        """Send a progress event to the graph's ``custom`` stream."""
        self._writer(event_to_dict(event))

    def complete(self, request: AggregatorCall) -> Completed:
        """Make ``request`` from a sync caller; the fallback aggregator answers if needed.

        Raises:
            AggregatorFailedError: No aggregator could answer.
        """
        failures: list[tuple[str, Exception]] = []
        for position, model in self._candidates():
            call = self._call(request, model)
            try:
                answer = call.run_sync(self.background.for_model(model))
            except Exception as error:
                failures.append((model_label(model), error))
                if isinstance(error, (StreamBrokenError, RunCancelledError)):
                    break  # no fallback: output went out, or the caller is gone
                continue
            return self._answered(request, call, answer, position, failures)
        # Raised outside the except blocks: no unmasked error as its context.
        raise self._give_up(request, failures)

    async def acomplete(self, request: AggregatorCall) -> Completed:
        """Make ``request`` on the running event loop; see :meth:`complete`."""
        failures: list[tuple[str, Exception]] = []
        for position, model in self._candidates():
            call = self._call(request, model)
            try:
                answer = await self._run_async(call, request.consume)
            except Exception as error:
                failures.append((model_label(model), error))
                if isinstance(error, StreamBrokenError):
                    break  # no fallback: part of the answer went out
                continue
            return self._answered(request, call, answer, position, failures)
        raise self._give_up(request, failures)

    def in_background(
        self, aggregate: Callable[[AggregationJob], Awaitable[Aggregated]]
    ) -> Aggregated:
        """Run an async strategy for a sync caller, on the shared background loop.

        The whole run is cancelled when the caller goes away.
        """
        limits = CallLimits(retry=RetryPolicy(max_retries=0), cancelled=self.options.cancelled)
        return call_sync(lambda: aggregate(self), limits)

    # -- the machinery

    def _candidates(self) -> list[tuple[int, Runnable]]:
        """The aggregators to try, from the one that answered last."""
        fallback = self.settings.fallback_aggregator
        models = [self.aggregator] if fallback is None else [self.aggregator, fallback]
        return list(enumerate(models))[self._current :]

    def _build(self, request: AggregatorCall) -> Callable[[Runnable], Runnable]:
        options, settings = self.options, self.settings

        def build(model: Runnable) -> Runnable:
            if request.final and options.structured is not None:
                return constrained_aggregator(model, options.structured)
            if options.tools and request.final:
                model = bind_tools(
                    model,
                    list(options.tools),
                    tool_choice=options.tool_choice,
                    **options.tool_kwargs,
                )
            elif options.tools:
                # A draft: the tools can be read, not called.
                with suppress(NotImplementedError):
                    model = bind_tools(model, list(options.tools), tool_choice="none")
            kwargs = (
                {
                    **settings.call_kwargs,
                    **settings.aggregator_call_kwargs,
                    **options.aggregator_kwargs,
                }
                if request.final
                else dict(settings.call_kwargs)
            )
            kwargs.update(request.overrides)
            return model.bind(**kwargs) if kwargs else model

        return build

    def _streamed(self, request: AggregatorCall) -> bool:
        return request.stream and request.final and self.streams

    def _call(self, request: AggregatorCall, model: Runnable) -> InnerCall:
        label = model_label(model)
        if request.announce:
            self.write(AggregationStarted(label, request.references))
        metadata = {"moa_layer": self.last_layer + 1, "moa_model": label, **request.metadata}
        name = f"aggregator · {request.step} · {label}" if request.step else f"aggregator · {label}"
        inner = inner_config(self.config, name, metadata, self.options.aggregator_tags)
        streams = self._streamed(request)
        settings = self.settings
        limits = CallLimits(
            retry=settings.retry,
            timeout=settings.aggregator_timeout,
            first_token_timeout=settings.aggregator_first_token_timeout if streams else None,
            timeout_error=AggregatorTimeoutError,
            limit=settings.limit,
            cancelled=self.options.cancelled,
        )
        writer = self._answer_writer if streams and request.consume is None else None
        return InnerCall(self._build(request), model, request.messages, inner, limits, writer)

    @staticmethod
    async def _run_async(call: InnerCall, consume: Consume | None) -> BaseMessage:
        if consume is None:
            return await call.run_async()

        async def attempt() -> BaseMessage:
            return await consume(await call.runnable_on_loop(), call)

        return await call_async(attempt, call.limits)

    def _answered(
        self,
        request: AggregatorCall,
        call: InnerCall,
        answer: BaseMessage,
        position: int,
        failures: list[tuple[str, Exception]],
    ) -> Completed:
        self._current = position
        self.failures.extend(failures)
        return Completed(answer, call, self._streamed(request))

    def _give_up(
        self, request: AggregatorCall, failures: list[tuple[str, Exception]]
    ) -> AggregatorFailedError:
        """The error for an aggregation that no aggregator could complete."""
        failures = [*self.failures, *failures]
        label, error = failures[-1]
        broken = isinstance(error, StreamBrokenError)
        partial = error.partial_text if broken else (request.answered or None)
        cause = error.error if broken else error
        proposals = self.state.get("proposals", [])
        failed = AggregatorFailedError(
            label, cause, proposals, partial_text=partial, failures=failures
        )
        # The provider's error may echo the API key: only a masked copy is chained.
        failed.__cause__ = mask_exception(cause)
        return failed


# -- strategies ------------------------------------------------------------------------


@dataclass(frozen=True)
class AggregationStrategy(ABC):
    """How the aggregator writes the ensemble's answer (subclass it, frozen dataclass).

    Class attributes:
        name: The name ``MoAChatModel(aggregation=...)`` knows it by.
        record_key: Its entry of ``response_metadata``, if it records one.
        runs_last_layer: It runs the last proposer layer itself (the graph
            leaves that layer out and gives it as ``job.layer``).

    The dataclass fields are the strategy's settings; :attr:`identity` (and so
    the LLM cache key and ``repr``) names the ones that differ from their
    defaults.
    """

    name: ClassVar[str] = ""
    record_key: ClassVar[str | None] = None
    runs_last_layer: ClassVar[bool] = False

    @property
    def identity(self) -> str:
        """A stable identity: the name, then the settings that differ from their defaults."""
        changed = [
            f"{f.name}={_shown(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if f.repr and getattr(self, f.name) != _default(f)
        ]
        return f"{self.name}({', '.join(changed)})" if changed else self.name

    def __str__(self) -> str:
        return self.identity

    def check_call(self, *, tools: bool, structured: bool) -> None:
        """Refuse a call this strategy cannot serve (before any provider is called).

        Args:
            tools: The caller bound tools.
            structured: The caller asked for a schema.

        Raises:
            ValueError: The strategy cannot take them.
        """
        del tools, structured  # every built-in strategy but the ranker takes both

    def aggregate(self, job: AggregationJob) -> Aggregated:
        """Write the answer for a sync caller (by default :meth:`aaggregate` in the background)."""
        return job.in_background(self.aaggregate)

    @abstractmethod
    async def aaggregate(self, job: AggregationJob) -> Aggregated:
        """Write the answer.

        Args:
            job: The run's aggregation: conversation, proposals, calls.

        Returns:
            The answer and what its record needs.

        Raises:
            AggregatorFailedError: No aggregator could answer.
        """


Steps = Generator[AggregatorCall, Completed, Aggregated]
"""A stepwise strategy's plan: yields the calls, receives their answers, returns the result."""


@dataclass(frozen=True)
class StepwiseStrategy(AggregationStrategy):
    """A strategy whose aggregator calls happen one after another.

    Subclasses write :meth:`steps` once; it runs on the sync path (each call as
    any inner call of a sync caller) and the async path alike.
    """

    @abstractmethod
    def steps(self, job: AggregationJob) -> Steps:
        """Yield each :class:`AggregatorCall`, receive its :class:`Completed`, return the result."""

    def aggregate(self, job: AggregationJob) -> Aggregated:
        """Run :meth:`steps` from a sync caller."""
        plan = self.steps(job)
        try:
            request = next(plan)
            while True:
                request = plan.send(job.complete(request))
        except StopIteration as finished:
            return finished.value

    async def aaggregate(self, job: AggregationJob) -> Aggregated:
        """Run :meth:`steps` on the running event loop."""
        plan = self.steps(job)
        try:
            request = next(plan)
            while True:
                request = plan.send(await job.acomplete(request))
        except StopIteration as finished:
            return finished.value


def _shown(value: Any) -> str:
    """A setting as it appears in an identity: long text by its hash."""
    if isinstance(value, str) and len(value) > _LONG_TEXT:
        return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]
    return repr(value)


def _default(spec: dataclasses.Field) -> Any:
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return dataclasses.MISSING


def elapsed_since(started: float) -> float:
    """Seconds since ``started`` (``perf_counter``), rounded as records are."""
    return round(time.perf_counter() - started, 4)
