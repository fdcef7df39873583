"""Driving one run of the graph for ``MoAChatModel``.

The graph's stream is sorted into the answer's tokens, progress events and the
final state. A sync run streams in a thread of its own and an async run in a
task, each inside the context prepared for inner calls, so that the caller only
waits for the next item: a closed stream, Ctrl-C or a cancelled task reaches it
at once. Progress goes to the caller's handlers and to the ``custom`` stream of
the LangGraph node the ensemble runs in. The sync runs of one ``batch`` form a
:class:`RunGroup`, which its caller's going away (Ctrl-C) cancels at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackManager, BaseCallbackManager, CallbackManager
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.runnables import RunnableConfig
from langgraph.config import get_stream_writer

from langchain_moa.callbacks import child_manager, inner_context, run_parent
from langchain_moa.events import AnswerToken
from langchain_moa.graph import RunOptions
from langchain_moa.report import annotate
from langchain_moa.resilience import RunCancelledError
from langchain_moa.state import MoAState
from langchain_moa.strategies import resolve_aggregation
from langchain_moa.validation import check_call_kwargs, check_conversation

if TYPE_CHECKING:
    from langchain_moa.chat_model import MoAChatModel

PROGRESS_EVENT = "moa_progress"
"""Name of the custom callback event that carries progress (see ``events``)."""

T = TypeVar("T")


class Progress:
    """Where a run's progress events go.

    To the caller's handlers, as ``moa_progress`` custom events, and to the
    ``custom`` stream of the LangGraph node the ensemble runs in, if any.
    """

    def __init__(self, parent: Any, run_id: UUID | None, manager_cls: type[Any]) -> None:
        self.run_id = run_id
        self.manager = None
        if parent is not None and run_id is not None and parent.handlers:
            self.manager = manager_cls(handlers=list(parent.handlers), parent_run_id=run_id)
        self.writer = outer_stream_writer()

    def stream_modes(self) -> dict[str, Any]:
        """What to stream from the graph: tokens, states and, if anyone listens, progress.

        Progress events come from the layer subgraphs, so only a listener pays
        for streaming them.
        """
        listening = self.manager is not None or self.writer is not None
        return {"stream_mode": ["custom", "values"], "subgraphs": listening}

    def send(self, event: dict[str, Any]) -> None:
        """Deliver one progress event (sync run)."""
        if self.writer is not None:
            self.writer({"moa_progress": event})
        if self.manager is not None:
            self.manager.on_custom_event(PROGRESS_EVENT, event, run_id=self.run_id)

    async def asend(self, event: dict[str, Any]) -> None:
        """Deliver one progress event (async run)."""
        if self.writer is not None:
            self.writer({"moa_progress": event})
        if self.manager is not None:
            await self.manager.on_custom_event(PROGRESS_EVENT, event, run_id=self.run_id)


def outer_stream_writer() -> Callable[[Any], None] | None:
    """The ``custom`` stream writer of the LangGraph node this call runs in, if any."""
    try:
        return get_stream_writer()
    except (RuntimeError, KeyError):  # not inside a LangGraph node
        return None


def classify(item: tuple[Any, ...]) -> tuple[str, Any]:
    """Sort one ``([namespace,] mode, payload)`` item of the graph's stream.

    Returns ``("token", AnswerToken)``, ``("progress", event dict)``, ``("state",
    state)`` for the top-level graph's state, or ``("other", payload)``.
    """
    namespace, mode, payload = item if len(item) == 3 else ((), *item)
    if mode == "custom":
        return ("token" if isinstance(payload, AnswerToken) else "progress"), payload
    return ("other" if namespace else "state"), payload


def checked(state: MoAState | None) -> MoAState:
    """The final state, if the graph produced an answer."""
    if state is None or "aggregation" not in state:
        msg = "the Mixture-of-Agents graph ended without an answer"
        raise RuntimeError(msg)
    return state


def token_chunk(token: AnswerToken) -> ChatGenerationChunk:
    """Re-emit an aggregator chunk without its own usage and metadata.

    The ensemble's summed usage and metadata go on the final chunk only, since
    LangChain adds usage and concatenates metadata strings across chunks.
    """
    inner = token.chunk
    return ChatGenerationChunk(
        message=AIMessageChunk(
            content=inner.content,
            additional_kwargs=inner.additional_kwargs,
            tool_call_chunks=inner.tool_call_chunks,
        )
    )


class Cancellable(Protocol):
    """What a caller sets when it goes away: a run's event, or a run group."""

    def set(self) -> None:
        """Cancel."""

    def is_set(self) -> bool:
        """Whether it was cancelled."""


def iter_in_thread(
    context: contextvars.Context, make: Callable[[], Iterator[T]], cancelled: Cancellable
) -> Iterator[T]:
    """Iterate a sync iterator (a graph stream, a batch) in a thread of its own, in ``context``.

    The caller only waits on a queue, so a closed stream or Ctrl-C reaches it at
    once; it then sets ``cancelled``, which stops the inner calls, and waits for
    the graph to wind down (LangGraph's executor waits for its running nodes).
    """
    results: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()

    def produce() -> None:
        items = make()
        try:
            for item in items:
                results.put(("item", item))
                if cancelled.is_set():
                    break
        except BaseException as error:
            results.put(("error", error))
            return
        finally:
            items.close()
        results.put(("done", None))

    worker = threading.Thread(target=context.run, args=(produce,), name="moa-run", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = results.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        cancelled.set()
        worker.join()


async def aiter_in_context(
    context: contextvars.Context, make: Callable[[], AsyncIterator[Any]]
) -> AsyncIterator[Any]:
    """Iterate an async iterator that runs as a task inside ``context``.

    A task copies the context it is created in, so the producer sees the
    context's variables for its whole life, whatever the consumer's context.
    """
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def produce() -> None:
        try:
            async for item in make():
                await queue.put(("item", item))
        except Exception as error:
            await queue.put(("error", error))
        await queue.put(("done", None))

    task = context.run(asyncio.ensure_future, produce())
    try:
        while True:
            kind, value = await queue.get()
            if kind == "done":
                break
            if kind == "error":
                raise value
            yield value
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class RunGroup:
    """The sync runs started within one call of ``batch``: cancelled together.

    A run joins the group of the context it starts in; LangChain's batch runs
    each call in a copy of the caller's context, so every call's run joins.
    """

    def __init__(self) -> None:
        self._runs: list[threading.Event] = []
        self._cancelled = False
        self._lock = threading.Lock()

    def join(self, cancelled: threading.Event) -> None:
        """Add a run (its ``RunOptions.cancelled``), before it calls any provider.

        Raises:
            RunCancelledError: The group was cancelled: the run must not start.
        """
        with self._lock:
            if self._cancelled:
                msg = "the caller went away before this call started"
                raise RunCancelledError(msg)
            self._runs.append(cancelled)

    def set(self) -> None:
        """Cancel every run of the group; later runs cannot join it."""
        with self._lock:
            self._cancelled = True
            for run in self._runs:
                run.set()

    def is_set(self) -> bool:
        """Whether the group was cancelled."""
        return self._cancelled


_RUN_GROUP: contextvars.ContextVar[RunGroup | None] = contextvars.ContextVar(
    "moa_run_group", default=None
)


def iter_in_run_group(make: Callable[[], Iterator[T]]) -> Iterator[T]:
    """Iterate ``make()`` in a thread of its own, in a new :class:`RunGroup`.

    The caller only waits, so Ctrl-C reaches it at once; the group's runs are
    then cancelled (their inner requests closed) before the exception goes on.
    """
    group = RunGroup()
    context = contextvars.copy_context()
    context.run(_RUN_GROUP.set, group)
    yield from iter_in_thread(context, make, group)


def in_run_group(call: Callable[[], T]) -> T:
    """Return ``call()``, run as :func:`iter_in_run_group` iterates."""

    def once() -> Iterator[T]:
        yield call()

    [result] = iter_in_run_group(once)
    return result


@dataclass
class GraphRun:
    """One call's run of the ensemble's graph, prepared from the call's arguments.

    ``iterate``/``aiterate`` yield the answer's chunks (when streaming), then
    the final state, whose answer ``finish`` completed (its cost and the cost
    controls' record, see ``report``); progress events go out as they come.
    """

    graph: Any
    inputs: dict[str, Any]
    options: RunOptions
    config: RunnableConfig
    progress: Progress
    context: contextvars.Context
    finish: Callable[[MoAState], MoAState] = field(default=lambda state: state)

    @classmethod
    def prepare(
        cls,
        model: MoAChatModel,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: Any,
        kwargs: dict[str, Any],
        *,
        stream: bool = False,
        is_async: bool = False,
    ) -> GraphRun:
        """Check the call and prepare its run (no provider is called).

        Raises:
            ValueError: The conversation cannot be answered (see ``validation``).
            TypeError: A per-call argument is unknown or of the wrong type.
        """
        run_id, parent = run_parent(run_manager)
        check_conversation(messages)
        # Copies: LangGraph's message reducer assigns ids, which must not touch
        # the caller's objects.
        inputs = {"messages": [m.model_copy() for m in messages]}
        options = run_options(model, stop, kwargs, stream=stream)
        if not is_async and (group := _RUN_GROUP.get()) is not None:
            group.join(options.cancelled)  # type: ignore[arg-type]
        manager_cls = AsyncCallbackManager if is_async else CallbackManager
        return cls(
            graph=model.graph,
            inputs=inputs,
            # Async runs are cancelled by task cancellation; they need no event.
            options=replace(options, cancelled=None) if is_async else options,
            config=graph_config(model, parent, run_id, is_async=is_async),
            progress=Progress(parent, run_id, manager_cls),
            context=inner_context(model.inner_callbacks),
            finish=partial(annotate, model),
        )

    def iterate(self) -> Iterator[Any]:
        """Drive a sync run."""
        state: MoAState | None = None

        def items() -> Iterator[Any]:
            modes = self.progress.stream_modes()
            return self.graph.stream(self.inputs, self.config, context=self.options, **modes)

        for item in iter_in_thread(self.context, items, self.options.cancelled):  # type: ignore[arg-type]
            kind, payload = classify(item)
            if kind == "token":
                yield token_chunk(payload)
            elif kind == "progress":
                self.progress.send(payload)
            elif kind == "state":
                state = payload
        yield self.finish(checked(state))

    async def aiterate(self) -> AsyncIterator[Any]:
        """Drive an async run."""
        state: MoAState | None = None

        def items() -> AsyncIterator[Any]:
            modes = self.progress.stream_modes()
            return self.graph.astream(self.inputs, self.config, context=self.options, **modes)

        async for item in aiter_in_context(self.context, items):
            kind, payload = classify(item)
            if kind == "token":
                yield token_chunk(payload)
            elif kind == "progress":
                await self.progress.asend(payload)
            elif kind == "state":
                state = payload
        yield self.finish(checked(state))


def run_options(
    model: MoAChatModel, stop: list[str] | None, kwargs: dict[str, Any], *, stream: bool
) -> RunOptions:
    """The graph's per-call options from a call's arguments.

    Raises:
        TypeError: A per-call argument is unknown or of the wrong type.
        ValueError: Tools or a schema with a strategy that cannot follow them
            (``aggregation="rank"``, ``"sequential"``, ...: its ``check_call``).
    """
    check_call_kwargs(kwargs, stop)
    aggregator_kwargs = {k: v for k, v in kwargs.items() if k != "stream"}
    tools = tuple(aggregator_kwargs.pop("tools", None) or ())
    tool_choice = aggregator_kwargs.pop("tool_choice", None)
    structured = aggregator_kwargs.pop("structured_output", None)
    budget = {key: aggregator_kwargs.pop(key, None) for key in ("max_cost_usd", "max_total_tokens")}
    tool_kwargs = {
        key: aggregator_kwargs.pop(key)
        for key in ("parallel_tool_calls", "strict")
        if key in aggregator_kwargs
    }
    if stop := stop or model.stop:
        aggregator_kwargs["stop"] = stop
    strategy = resolve_aggregation(model.aggregation)
    strategy.check_call(tools=bool(tools), structured=structured is not None)
    hidden = ("nostream",) if model.inner_callbacks == "tracers" else ()
    return RunOptions(
        aggregator_kwargs=aggregator_kwargs,
        stream_answer=stream,
        proposer_tags=hidden,
        aggregator_tags=hidden,
        tools=tools,
        tool_choice=tool_choice,
        tool_kwargs=tool_kwargs,
        structured=structured,
        cancelled=threading.Event(),
        **budget,
    )


def graph_config(
    model: MoAChatModel, parent: BaseCallbackManager | None, run_id: UUID | None, *, is_async: bool
) -> RunnableConfig:
    """The graph run's config: its name, thread pool size and the inner callbacks."""
    # Enough threads for the widest layer plus the layer subgraph's own node
    # (sync LangGraph sizes its thread pool from max_concurrency).
    width = max(len(layer) for layer in model.proposer_layers) + 1
    config: RunnableConfig = {"max_concurrency": width, "run_name": "mixture_of_agents"}
    if parent is not None and run_id is not None:
        config["callbacks"] = child_manager(
            parent, run_id, model.inner_callbacks, is_async=is_async
        )
    return config
