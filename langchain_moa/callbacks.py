"""Which of the caller's callback handlers follow a run into its inner model calls.

To its caller, an ensemble behaves as one chat model: handlers that count tokens,
stream messages (LangGraph's ``stream_mode="messages"``) or record events see the
ensemble's own run only. Tracers (``BaseTracer`` subclasses such as LangSmith's
``LangChainTracer``) follow the inner runs, so traces keep the full tree.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any, Literal
from uuid import UUID, uuid4

from langchain_core.callbacks import (
    AsyncCallbackManager,
    BaseCallbackHandler,
    BaseCallbackManager,
    CallbackManager,
)
from langchain_core.runnables import RunnableConfig, ensure_config
from langchain_core.runnables.config import var_child_runnable_config
from langchain_core.tracers.base import AsyncBaseTracer, BaseTracer

from langchain_moa._compat import configure_hook_variables

InnerCallbacks = Literal["tracers", "all"]
"""``"tracers"``: only tracers see inner runs (default); ``"all"``: every handler."""


def _follows(handler: BaseCallbackHandler, policy: InnerCallbacks) -> bool:
    return policy == "all" or isinstance(handler, (BaseTracer, AsyncBaseTracer))


def child_manager(
    parent: BaseCallbackManager,
    run_id: UUID,
    policy: InnerCallbacks,
    *,
    is_async: bool,
) -> BaseCallbackManager:
    """Return a callback manager for runs nested under run ``run_id``.

    Args:
        parent: A manager holding the run's inheritable handlers, tags and metadata.
        run_id: The run the inner runs belong to.
        policy: Which handlers follow into the inner runs.
        is_async: Build an ``AsyncCallbackManager`` instead of a ``CallbackManager``.
    """
    handlers = [h for h in parent.inheritable_handlers if _follows(h, policy)]
    cls = AsyncCallbackManager if is_async else CallbackManager
    return cls(
        handlers=list(handlers),
        inheritable_handlers=list(handlers),
        parent_run_id=run_id,
        tags=list(parent.inheritable_tags),
        inheritable_tags=list(parent.inheritable_tags),
        metadata=dict(parent.inheritable_metadata),
        inheritable_metadata=dict(parent.inheritable_metadata),
    )


def inner_context(policy: InnerCallbacks) -> contextvars.Context:
    """Return a copy of the current context for running the inner graph.

    The ambient runnable config is cleared: when the ensemble runs inside a node
    of a user's graph, LangGraph would otherwise merge that node's config
    (callbacks, checkpoint namespace) into the inner graph's, nesting inner runs
    under the wrong parent. Handlers that LangChain attaches from context
    variables (for example ``get_usage_metadata_callback()``) would join every
    inner call on their own; with the ``"tracers"`` policy, non-tracer ones are
    switched off in the copy. Tracing context (``tracing_v2_enabled``) is kept.
    """
    context = contextvars.copy_context()
    context.run(var_child_runnable_config.set, None)
    if policy == "all":
        return context
    hooked: Sequence[contextvars.ContextVar] = [
        var for var in configure_hook_variables() if not _follows_var(var)
    ]
    for var in hooked:
        context.run(var.set, None)
    return context


def _follows_var(var: contextvars.ContextVar) -> bool:
    handler = var.get(None)
    return handler is None or isinstance(handler, (BaseTracer, AsyncBaseTracer))


# LangChain calls ``_stream``/``_astream`` without the run it started:
# ``MoAChatModel.stream``/``astream`` and ``_should_stream`` hand it over here.
_STREAM_RUN: ContextVar[tuple[UUID, BaseCallbackManager] | None] = ContextVar(
    "moa_stream_run", default=None
)


def hand_over_run(run_id: UUID, manager: BaseCallbackManager) -> None:
    """Leave the run for the next ``_stream``/``_astream`` call in this context."""
    _STREAM_RUN.set((run_id, manager))


def clear_handed_over_run() -> None:
    """Forget a run that was handed over and not taken."""
    _STREAM_RUN.set(None)


def run_parent(run_manager: Any) -> tuple[UUID | None, Any]:
    """The run that inner runs nest under, and a manager with its handlers.

    ``stream()``/``astream()`` hand their run over (``hand_over_run``)
    because LangChain calls ``_stream`` without a run manager.
    """
    if run_manager is not None:
        return run_manager.run_id, run_manager
    handed_over = _STREAM_RUN.get()
    _STREAM_RUN.set(None)
    return handed_over if handed_over else (None, None)


def stream_config(
    model: Any, config: RunnableConfig | None, manager_cls: type[Any]
) -> RunnableConfig:
    """``config`` with a run id and the callback manager LangChain would build."""
    config = ensure_config(config)
    manager = manager_cls.configure(
        config.get("callbacks"),
        model.callbacks,
        model.verbose,
        config.get("tags"),
        model.tags,
        config.get("metadata"),
        model.metadata,
    )
    return {**config, "run_id": config.get("run_id") or uuid4(), "callbacks": manager}
