"""``MoAChatModel``: Mixture-of-Agents as a LangChain chat model."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import math
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import replace
from functools import cached_property
from typing import Any
from uuid import UUID, uuid4

from langchain_core.caches import BaseCache
from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    BaseCallbackManager,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.load import dumps
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.config import get_stream_writer
from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from langchain_moa._compat import convert_cached_generations, openai_root_async_client
from langchain_moa.aggregation import AggregationStrategy
from langchain_moa.callbacks import InnerCallbacks, child_manager, inner_context
from langchain_moa.events import AnswerToken
from langchain_moa.graph import EngineSettings, RunOptions, build_moa_graph
from langchain_moa.inner_models import chat_model_of, is_inner_model, model_identity
from langchain_moa.prompts import (
    DEFAULT_AGGREGATOR_PROMPT,
    DEFAULT_RANKER_PROMPT,
    ReferenceFormat,
)
from langchain_moa.resilience import ConcurrencyLimit, RetryPolicy
from langchain_moa.state import MoAState
from langchain_moa.strategies import Rank, resolve_aggregation
from langchain_moa.structured_output import StructuredMethod, structured_runnable
from langchain_moa.validation import (
    MAX_LAYERS,
    check_call_kwargs,
    check_conversation,
)

PROGRESS_EVENT = "moa_progress"
"""Name of the custom callback event that carries progress (see ``events``)."""

_PAPER_LAYERS = 3

ENGINE_FIELDS: dict[str, str] = {
    "aggregator_prompt": "prompt",
    "model_name": "model_name",
    "min_proposers": "min_proposers",
    "proposer_timeout": "proposer_timeout",
    "aggregator_timeout": "aggregator_timeout",
    "aggregator_first_token_timeout": "aggregator_first_token_timeout",
    "layer_deadline": "layer_deadline",
    "max_reference_chars": "max_reference_chars",
    "reference_format": "reference_format",
    "fallback_aggregator": "fallback_aggregator",
}
"""Fields copied into ``EngineSettings`` as they are (field name -> setting name)."""

COMBINED_FIELDS: frozenset[str] = frozenset(
    {
        "temperature",
        "max_tokens",
        "max_retries",
        "retry_base_delay",
        "retry_max_delay",
        "max_concurrency",
        "aggregation",
        "ranker_prompt",
        "stop",
    }
)
"""Fields combined into ``EngineSettings`` by ``MoAChatModel.engine_settings``."""

ENSEMBLE_FIELDS: frozenset[str] = frozenset(
    {"proposers", "aggregator", "layers", "streaming", "inner_callbacks"}
)
"""The ensemble's own fields that the engine does not read (the line-up is passed
as models; ``streaming`` is per call)."""
_DERIVED = ("graph", "_inner_identities")
# Fields that do not change an answer: left out of the cache key.
_NOT_IN_CACHE_KEY = frozenset(
    {
        "cache",
        "callbacks",
        "callback_manager",
        "custom_get_token_ids",
        "disable_streaming",
        "inner_callbacks",
        "metadata",
        "profile",
        "rate_limiter",
        "streaming",
        "tags",
        "verbose",
    }
)
# Hands the run of ``stream()``/``astream()`` to ``_stream``/``_astream``, which
# LangChain calls without a run manager (see ``MoAChatModel.stream``).
_STREAM_RUN: ContextVar[tuple[UUID, BaseCallbackManager] | None] = ContextVar(
    "moa_stream_run", default=None
)


class MoAChatModel(BaseChatModel):
    """Mixture-of-Agents (Wang et al., 2024) as a LangChain chat model.

    Layer 1's proposers answer the conversation in parallel; every agent of a
    later layer, and finally the aggregator, gets the conversation plus all
    successful answers of the layer before, as the numbered references of the
    paper's aggregate-and-synthesize system prompt. The result is the
    aggregator's message, with the summed token usage of every inner call and
    every proposal in ``response_metadata``.

    Setup:
        ```bash
        pip install langchain-moa
        ```

    Instantiate:
        ```python
        from langchain_openai import ChatOpenAI
        from langchain_moa import MoAChatModel

        llm = MoAChatModel(
            proposers=[ChatOpenAI(model="gpt-4o-mini"), ChatOpenAI(model="gpt-4.1-mini")],
            aggregator=ChatOpenAI(model="gpt-4o"),
            layers=3,  # paper's MoA; 2 = MoA-Lite
        )
        ```

    Invoke:
        ```python
        msg = llm.invoke("Why is the sky blue?")
        msg.content  # the aggregator's answer
        msg.usage_metadata  # tokens of all inner calls
        msg.response_metadata["proposals"]  # per layer: model, text, usage, latency, error
        ```

    Stream (the aggregator's tokens, as it writes them):
        ```python
        for chunk in llm.stream("Why is the sky blue?"):
            print(chunk.content, end="")
        ```

    Per-layer proposers:
        ```python
        MoAChatModel(proposers=[[a, b, c], [d, e]], aggregator=f)  # layers = 3
        ```

    Graph:
        ``llm.graph`` is the compiled LangGraph state machine: input
        ``{"messages": [...]}``, output ``{"messages": [..., answer], "proposals":
        [...], "aggregation": ...}``. It can be added as a node of a graph whose
        state has a ``messages`` channel.
    """

    proposers: list[Runnable] | list[list[Runnable]]
    """Proposer models: one list reused in every proposer layer, or one list per
    proposer layer. A model may appear more than once (Self-MoA). Each is a chat
    model or a runnable wrapping one (``.bind(...)``, ``.with_retry()``, a
    configurable ``init_chat_model()``)."""

    aggregator: Runnable
    """The model that synthesizes the last proposer layer's answers."""

    layers: int | None = None
    """All layers, the aggregator's included: 3 is the paper's MoA, 2 MoA-Lite.
    Defaults to 3 for a flat ``proposers`` list; follows from per-layer lists."""

    aggregator_prompt: str = DEFAULT_AGGREGATOR_PROMPT
    """System prompt that introduces the references; the paper's by default."""

    aggregation: str | AggregationStrategy = "synthesize"
    """How the aggregator writes the answer (see ``langchain_moa.aggregation``):
    ``"synthesize"`` (MoA: it writes a new answer from every proposal),
    ``"rank"`` (it only picks the best proposal, which becomes the answer word
    for word: the paper's LLM-ranker baseline, Figure 4), ``"staircase"`` (it
    starts on the proposals' first chunks, see ``Staircase``), ``"sequential"``
    (it reads a window of proposals at a time, see ``Sequential``), or a
    configured instance such as ``Staircase(chunk_tokens=48)``."""

    reference_format: ReferenceFormat = "paper"
    """How references are laid out for the aggregator: ``"paper"`` (numbered, the
    paper's format byte for byte) or ``"delimited"`` (each fenced with a random
    tag, so a proposal cannot forge another reference, a header or a marker)."""

    ranker_prompt: str = DEFAULT_RANKER_PROMPT
    """System prompt of ``aggregation="rank"``; the references follow it."""

    min_proposers: int = Field(default=1, ge=1)
    """Successful answers each proposer layer needs for the run to go on; below
    it, ``ProposersFailedError`` is raised with every cause."""

    proposer_timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Seconds each proposer call may take, retries included; a proposer that
    exceeds it is cancelled and counted as failed. ``None``: no limit."""

    layer_deadline: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Seconds after a layer starts when, once ``min_proposers`` answered, its
    stragglers are cancelled and the next layer starts. ``None``: wait for all."""

    aggregator_timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Seconds the aggregator may take, retries included, streamed or not; when it
    passes, the fallback aggregator (if any) answers instead."""

    aggregator_first_token_timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Seconds a streamed aggregator may take to send its first token."""

    max_retries: int = Field(default=2, ge=0, le=100)
    """Retries of a transient failure (429, 5xx, connection errors) per inner
    call, with exponential backoff and jitter, honouring ``Retry-After``.
    Permanent failures (400, 401, 403, 404, 422) are not retried. Set the inner
    models' own ``max_retries=0`` so that only this layer retries."""

    retry_base_delay: float = Field(default=0.5, ge=0, le=600, allow_inf_nan=False)
    """First backoff in seconds; it doubles with every retry."""

    retry_max_delay: float = Field(default=20.0, ge=0, le=600, allow_inf_nan=False)
    """Longest single wait between retries, ``Retry-After`` included (at most 600)."""

    max_concurrency: int | None = Field(default=None, ge=1)
    """Most inner calls in flight at once for this ensemble, across concurrent
    requests (per event loop on the async path). ``None``: no bound."""

    max_reference_chars: int | None = Field(default=None, ge=1)
    """Character budget of the references one agent reads; longer ones are cut
    fairly, each with a visible truncation marker. ``None``: no budget."""

    fallback_aggregator: Runnable | None = None
    """Aggregates instead when the aggregator fails (after its retries)."""

    temperature: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """If set, the sampling temperature of every inner call (a per-call
    ``temperature`` applies to the aggregator only)."""

    max_tokens: int | None = Field(default=None, ge=1)
    """If set, the maximum tokens of every inner call (a per-call ``max_tokens``
    applies to the aggregator only)."""

    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    """Default stop sequences, applied to the aggregator (the final answer)."""

    streaming: bool = False
    """Whether ``invoke`` streams the aggregator internally (callbacks see its tokens)."""

    model_name: str = Field(default="mixture-of-agents", alias="model")
    """Name of the ensemble in ``response_metadata`` and traces."""

    inner_callbacks: InnerCallbacks = "tracers"
    """Which of the caller's callback handlers see the inner model runs:
    ``"tracers"`` (LangSmith and other tracers; the ensemble looks like one chat
    model to everything else) or ``"all"``."""

    _profile_from_aggregator: bool = PrivateAttr(default=False)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, arbitrary_types_allowed=True)

    @model_validator(mode="before")
    @classmethod
    def _check_proposers(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        proposers = values.get("proposers")
        if is_inner_model(proposers) or not isinstance(proposers, Sequence):
            msg = "proposers must be a list of chat models or a list of lists of chat models"
            raise ValueError(msg)
        if not proposers:
            msg = "proposers is empty: give at least one proposer model"
            raise ValueError(msg)
        nested = [isinstance(p, Sequence) and not isinstance(p, str) for p in proposers]
        if any(nested) and not all(nested):
            msg = "proposers mixes models and lists: give a list of models or a list of lists"
            raise ValueError(msg)
        layers = proposers if all(nested) else [proposers]
        for number, layer in enumerate(layers, 1):
            if not layer:
                msg = f"proposer layer {number} is empty: every layer needs a proposer"
                raise ValueError(msg)
            for position, model in enumerate(layer):
                if not is_inner_model(model):
                    where = (
                        f"layer {number}, position {position}"
                        if all(nested)
                        else f"position {position}"
                    )
                    msg = f"proposer at {where} is a {type(model).__name__}, not a chat model"
                    raise ValueError(msg)
        for name in ("aggregator", "fallback_aggregator"):
            model = values.get(name)
            if name in values and model is not None and not is_inner_model(model):
                msg = f"{name} is a {type(model).__name__}, not a chat model"
                raise ValueError(msg)
        return values

    @field_validator("aggregation")
    @classmethod
    def _check_aggregation(cls, value: Any) -> Any:
        resolve_aggregation(value)  # an unknown name fails here, naming the known ones
        return value

    @model_validator(mode="after")
    def _check_layers(self) -> MoAChatModel:
        per_layer = isinstance(self.proposers[0], list)
        if per_layer:
            implied = len(self.proposers) + 1
            if self.layers is not None and self.layers != implied:
                msg = (
                    f"layers={self.layers} does not match the {len(self.proposers)} "
                    f"proposer layers given (+1 aggregator layer = {implied})"
                )
                raise ValueError(msg)
            self.__dict__["layers"] = implied
        elif self.layers is None:
            self.__dict__["layers"] = _PAPER_LAYERS
        if self.layers < 2:  # type: ignore[operator]
            msg = (
                f"layers must be at least 2 (one proposer layer and the aggregator), "
                f"got {self.layers}"
            )
            raise ValueError(msg)
        if self.layers > MAX_LAYERS:  # type: ignore[operator]
            msg = f"layers must be at most {MAX_LAYERS}, got {self.layers}"
            raise ValueError(msg)
        narrowest = min(len(layer) for layer in self.proposer_layers)
        if self.min_proposers > narrowest:
            msg = (
                f"min_proposers={self.min_proposers} can never be met: the smallest "
                f"proposer layer has {narrowest} proposer(s)"
            )
            raise ValueError(msg)
        if self.profile is None:
            # What create_agent reads to choose its structured-output strategy;
            # it follows the aggregator (see _forget_derived).
            self._profile_from_aggregator = True
            self.__dict__["profile"] = self._aggregator_profile()
        return self

    # -- state derived from the settings ----------------------------------------
    # The compiled graph and the inner identities are cached; they must follow
    # the settings, so a changed field, a copy and a pickle drop them.

    def _forget_derived(self) -> None:
        for name in _DERIVED:
            self.__dict__.pop(name, None)
        if self._profile_from_aggregator:
            self.__dict__["profile"] = self._aggregator_profile()

    def _aggregator_profile(self) -> Any:
        aggregator = chat_model_of(self.aggregator)
        return aggregator.profile if aggregator is not None else None

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        self._forget_derived()

    def model_copy(
        self, *, update: Mapping[str, Any] | None = None, deep: bool = False
    ) -> MoAChatModel:
        """A copy, with ``update`` applied; derived state follows the copy's settings."""
        copied = super().model_copy(update=update, deep=deep)
        copied._forget_derived()
        return copied

    def __copy__(self) -> MoAChatModel:
        copied = super().__copy__()
        copied._forget_derived()
        return copied

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> MoAChatModel:
        # Only the settings are copied: the compiled graph holds locks (it
        # cannot be deep-copied) and is rebuilt from the copied settings.
        memo = {} if memo is None else memo
        settings = self.__copy__()
        copied = super(MoAChatModel, settings).__deepcopy__(memo)
        memo.pop(id(settings), None)  # a temporary: its id may be reused
        memo[id(self)] = copied
        return copied

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["__dict__"] = {k: v for k, v in state["__dict__"].items() if k not in _DERIVED}
        return state

    @property
    def proposer_layers(self) -> tuple[tuple[Runnable, ...], ...]:
        """The proposer models of each proposer layer, in order."""
        if isinstance(self.proposers[0], list):
            return tuple(tuple(layer) for layer in self.proposers)  # type: ignore[arg-type]
        return (tuple(self.proposers),) * (self.layers - 1)  # type: ignore[arg-type, operator]

    @cached_property
    def graph(self) -> CompiledStateGraph:
        """The compiled LangGraph state machine (built on first use).

        Input ``{"messages": [...]}``; output ``{"messages": [..., answer],
        "proposals": [Proposal, ...], "aggregation": Proposal}``. Per-call
        options are passed as ``context=RunOptions(...)``.
        """
        return build_moa_graph(self.proposer_layers, self.aggregator, self.engine_settings())

    def engine_settings(self) -> EngineSettings:
        """The settings the graph runs with, derived from this model's fields.

        Fields named in ``ENGINE_FIELDS`` are copied as they are; the others
        that shape inner calls are combined here. ``ENSEMBLE_FIELDS`` lists the
        fields the graph does not read.
        """
        call_kwargs = {
            key: value
            for key, value in (("temperature", self.temperature), ("max_tokens", self.max_tokens))
            if value is not None
        }
        strategy = resolve_aggregation(self.aggregation)
        return EngineSettings(
            **{target: getattr(self, name) for name, target in ENGINE_FIELDS.items()},
            call_kwargs=call_kwargs,
            # The default stop also applies when the graph runs on its own
            # (as a subgraph); a call's own stop goes in RunOptions.
            aggregator_call_kwargs={"stop": self.stop} if self.stop else {},
            retry=RetryPolicy(self.max_retries, self.retry_base_delay, self.retry_max_delay),
            limit=ConcurrencyLimit(self.max_concurrency) if self.max_concurrency else None,
            ranker_prompt=self.ranker_prompt if isinstance(strategy, Rank) else None,
            aggregation=strategy,
        )

    @cached_property
    def _inner_identities(self) -> dict[str, Any]:
        """Every setting that can change an answer, inner models by identity.

        Computed once (it is read on every call, for tracing and cache keys);
        forgotten when a field changes.
        """
        identities: dict[str, Any] = {}
        for name in type(self).model_fields:
            if name not in _NOT_IN_CACHE_KEY:
                # LangChain's cache key overwrites "stop" with the call's stop.
                key = "stop_sequences" if name == "stop" else name
                identities[key] = _setting_identity(getattr(self, name))
        return identities

    @property
    def _llm_type(self) -> str:
        return "mixture-of-agents"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return dict(self._inner_identities)

    # -- tokens: counted with the aggregator's own counter -----------------------

    def _counting_model(self) -> BaseChatModel | None:
        return chat_model_of(self.aggregator)

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` by the aggregator's tokenizer."""
        model = self._counting_model()
        return model.get_token_ids(text) if model is not None else super().get_token_ids(text)

    def get_num_tokens(self, text: str) -> int:
        """Tokens in ``text`` by the aggregator's counter."""
        model = self._counting_model()
        return model.get_num_tokens(text) if model is not None else super().get_num_tokens(text)

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence | None = None
    ) -> int:
        """Tokens in ``messages`` by the aggregator's counter (one agent's input)."""
        model = self._counting_model()
        if model is None:
            return super().get_num_tokens_from_messages(messages, tools)
        return model.get_num_tokens_from_messages(messages, tools)

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="langchain-moa",
            ls_model_name=kwargs.get("model", self.model_name),
            ls_model_type="chat",
        )
        if (temperature := kwargs.get("temperature", self.temperature)) is not None:
            params["ls_temperature"] = temperature
        if (max_tokens := kwargs.get("max_tokens", self.max_tokens)) is not None:
            params["ls_max_tokens"] = max_tokens
        if stop := stop or self.stop:
            params["ls_stop"] = stop
        return params

    # -- running the graph -------------------------------------------------

    def _run_options(
        self, stop: list[str] | None, kwargs: dict[str, Any], *, stream: bool
    ) -> RunOptions:
        check_call_kwargs(kwargs, stop)
        aggregator_kwargs = {k: v for k, v in kwargs.items() if k != "stream"}
        tools = tuple(aggregator_kwargs.pop("tools", None) or ())
        tool_choice = aggregator_kwargs.pop("tool_choice", None)
        structured = aggregator_kwargs.pop("structured_output", None)
        tool_kwargs = {
            key: aggregator_kwargs.pop(key)
            for key in ("parallel_tool_calls", "strict")
            if key in aggregator_kwargs
        }
        if stop := stop or self.stop:
            aggregator_kwargs["stop"] = stop
        strategy = resolve_aggregation(self.aggregation)
        strategy.check_call(tools=bool(tools), structured=structured is not None)
        hidden = ("nostream",) if self.inner_callbacks == "tracers" else ()
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
        )

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools: the aggregator may call them, proposers only see them.

        The aggregator gets the tools through its own ``bind_tools`` with
        ``tool_choice`` (``"auto"``, ``"any"``/``"required"``, a tool name, a
        dict), ``parallel_tool_calls`` and ``strict``; its tool calls are the
        result's. Proposers get the same tools with ``tool_choice="none"`` so
        their proposals can reason about which action to take, in text.

        Args:
            tools: Tools as dicts, pydantic models, functions or ``BaseTool``.
            tool_choice: Which tool the aggregator must call, if any.
            parallel_tool_calls: Allow several calls in one answer.
            strict: Ask the provider to enforce the tools' schemas.
            **kwargs: Further arguments bound to the call.

        Returns:
            A runnable that calls this ensemble with the tools bound.
        """
        if strict is None and kwargs.get("response_format") and self._openai_aggregator():
            # As create_agent does for OpenAI models: a strict response format
            # needs strict tools (the ensemble hides its aggregator from it).
            strict = True
        formatted = [convert_to_openai_tool(tool, strict=strict) for tool in tools]
        extra: dict[str, Any] = {}
        if tool_choice is not None:
            extra["tool_choice"] = tool_choice
        if parallel_tool_calls is not None:
            extra["parallel_tool_calls"] = parallel_tool_calls
        if strict is not None:
            extra["strict"] = strict
        return self.bind(tools=formatted, **extra, **kwargs)

    def _openai_aggregator(self) -> bool:
        aggregator = chat_model_of(self.aggregator)
        return aggregator is not None and openai_root_async_client(aggregator) is not None

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: StructuredMethod = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Constrain the final answer to ``schema``; proposals stay free text.

        Args:
            schema: A pydantic class, a TypedDict or a JSON schema dict.
            method: ``"function_calling"`` (the aggregator calls a tool named
                after the schema), ``"json_schema"`` (the aggregator's native
                structured output) or ``"json_mode"`` (a JSON object).
            include_raw: Return ``{"raw": AIMessage, "parsed": ...,
                "parsing_error": ...}`` instead of raising on a parsing error.
            strict: Ask the aggregator's provider to enforce the schema.
            **kwargs: Not supported; present for signature compatibility.

        Returns:
            A runnable from the ensemble's input to the parsed output.
        """
        if kwargs:
            msg = f"with_structured_output got unsupported arguments {sorted(kwargs)}"
            raise ValueError(msg)
        return structured_runnable(
            self, schema, method=method, include_raw=include_raw, strict=strict
        )

    def _graph_input(self, messages: list[BaseMessage]) -> dict[str, Any]:
        check_conversation(messages)
        # Copies: LangGraph's message reducer assigns ids, which must not touch
        # the caller's objects.
        return {"messages": [m.model_copy() for m in messages]}

    def _graph_config(
        self, parent: BaseCallbackManager | None, run_id: UUID | None, *, is_async: bool
    ) -> RunnableConfig:
        # Enough threads for the widest layer plus the layer subgraph's own node
        # (sync LangGraph sizes its thread pool from max_concurrency).
        width = max(len(layer) for layer in self.proposer_layers) + 1
        config: RunnableConfig = {
            "max_concurrency": width,
            "run_name": "mixture_of_agents",
        }
        if parent is not None and run_id is not None:
            config["callbacks"] = child_manager(
                parent, run_id, self.inner_callbacks, is_async=is_async
            )
        return config

    def _result(self, state: MoAState) -> AIMessage:
        """The ensemble's answer, as the graph's ``aggregate`` node wrote it."""
        answer = state["messages"][-1]
        return answer.model_copy(update={"id": None}) if isinstance(answer, AIMessage) else answer

    def _final_chunk(self, state: MoAState) -> ChatGenerationChunk:
        answer = self._result(state)
        chunk = AIMessageChunk(
            content="",
            usage_metadata=answer.usage_metadata,
            response_metadata=answer.response_metadata,
            chunk_position="last",
        )
        return ChatGenerationChunk(message=chunk)

    # -- the LLM cache: degraded answers are not kept -----------------------------

    def _generate_with_cache(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        cache = self._active_cache()
        if cache is None:
            return super()._generate_with_cache(messages, stop, run_manager, **kwargs)
        key = self._cache_key(messages, stop, kwargs)
        if isinstance(hit := cache.lookup(*key), list):
            return ChatResult(generations=convert_cached_generations(self, hit))
        uncached = self._uncached_twin()
        result = BaseChatModel._generate_with_cache(uncached, messages, stop, run_manager, **kwargs)
        if not _degraded(result):
            cache.update(*key, result.generations)
        return result

    async def _agenerate_with_cache(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        cache = self._active_cache()
        if cache is None:
            return await super()._agenerate_with_cache(messages, stop, run_manager, **kwargs)
        key = self._cache_key(messages, stop, kwargs)
        if isinstance(hit := await cache.alookup(*key), list):
            return ChatResult(generations=convert_cached_generations(self, hit))
        uncached = self._uncached_twin()
        result = await BaseChatModel._agenerate_with_cache(
            uncached, messages, stop, run_manager, **kwargs
        )
        if not _degraded(result):
            await cache.aupdate(*key, result.generations)
        return result

    def _active_cache(self) -> BaseCache | None:
        """The LLM cache LangChain would use for this ensemble, if any."""
        if self.cache is False:
            return None
        return self.cache if isinstance(self.cache, BaseCache) else get_llm_cache()

    def _cache_key(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[str, str]:
        """LangChain's cache key: the messages without ids, and the settings."""
        normalized = [m.model_copy(update={"id": None}) if m.id else m for m in messages]
        return dumps(normalized), self._get_llm_string(stop=stop, **kwargs)

    def _uncached_twin(self) -> MoAChatModel:
        """This ensemble with LangChain's own caching off, sharing the compiled graph."""
        twin = BaseChatModel.__copy__(self)
        twin.__dict__["cache"] = False
        return twin

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        *_, state = self._run(messages, stop, run_manager, kwargs, stream=False)
        return ChatResult(generations=[ChatGeneration(message=self._result(state))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        items = [i async for i in self._arun(messages, stop, run_manager, kwargs, stream=False)]
        state = items[-1]
        return ChatResult(generations=[ChatGeneration(message=self._result(state))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for item in self._run(messages, stop, run_manager, kwargs, stream=True):
            yield (item if isinstance(item, ChatGenerationChunk) else self._final_chunk(item))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for item in self._arun(messages, stop, run_manager, kwargs, stream=True):
            yield (item if isinstance(item, ChatGenerationChunk) else self._final_chunk(item))

    # -- running the graph ---------------------------------------------------
    # ``_run``/``_arun`` drive the graph's stream and yield the answer's chunks
    # (when streaming), then the final state. Progress events go to the
    # caller's handlers as ``moa_progress`` custom events.

    def _run(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: CallbackManagerForLLMRun | None,
        kwargs: dict[str, Any],
        *,
        stream: bool,
    ) -> Iterator[Any]:
        run_id, parent = _run_parent(run_manager)
        inputs = self._graph_input(messages)
        options = self._run_options(stop, kwargs, stream=stream)
        config = self._graph_config(parent, run_id, is_async=False)
        progress = _Progress(parent, run_id, CallbackManager)
        context = inner_context(self.inner_callbacks)
        state: MoAState | None = None

        def items() -> Iterator[Any]:
            return self.graph.stream(inputs, config, context=options, **progress.stream_modes())

        for item in _iter_in_thread(context, items, options.cancelled):  # type: ignore[arg-type]
            kind, payload = _classify(item)
            if kind == "token":
                yield _token_chunk(payload)
            elif kind == "progress":
                progress.send(payload)
            elif kind == "state":
                state = payload
        yield _checked(state)

    async def _arun(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: AsyncCallbackManagerForLLMRun | None,
        kwargs: dict[str, Any],
        *,
        stream: bool,
    ) -> AsyncIterator[Any]:
        run_id, parent = _run_parent(run_manager)
        inputs = self._graph_input(messages)
        options = self._run_options(stop, kwargs, stream=stream)
        options = _without_event(options)
        config = self._graph_config(parent, run_id, is_async=True)
        progress = _Progress(parent, run_id, AsyncCallbackManager)
        context = inner_context(self.inner_callbacks)
        state: MoAState | None = None

        def items() -> AsyncIterator[Any]:
            return self.graph.astream(inputs, config, context=options, **progress.stream_modes())

        async for item in _aiter_in_context(context, items):
            kind, payload = _classify(item)
            if kind == "token":
                yield _token_chunk(payload)
            elif kind == "progress":
                await progress.asend(payload)
            elif kind == "state":
                state = payload
        yield _checked(state)

    # -- handing the run over to _stream ---------------------------------------

    def _should_stream(
        self,
        *,
        async_api: bool,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> bool:
        """Hand the run over when LangChain streams an ``invoke`` implicitly.

        With a streaming handler attached (LangGraph's ``stream_mode="messages"``,
        ``astream_events``), LangChain asks this with the run manager and then
        calls ``_stream``/``_astream`` without it.
        """
        should = super()._should_stream(async_api=async_api, run_manager=run_manager, **kwargs)
        if should and run_manager is not None:
            _STREAM_RUN.set((run_manager.run_id, run_manager))
        return should

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        """Stream the aggregator's answer; see ``BaseChatModel.stream``.

        LangChain calls ``_stream`` without the run it started, so this names
        the run and hands its callback manager over, keeping inner runs nested
        under the ensemble's run.
        """
        config = self._stream_config(config, CallbackManager)
        _STREAM_RUN.set((config["run_id"], config["callbacks"]))  # type: ignore[typeddict-item]
        try:
            yield from super().stream(input, config, stop=stop, **kwargs)
        finally:
            _STREAM_RUN.set(None)

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """Stream the aggregator's answer; see ``BaseChatModel.astream``."""
        config = self._stream_config(config, AsyncCallbackManager)
        _STREAM_RUN.set((config["run_id"], config["callbacks"]))  # type: ignore[typeddict-item]
        try:
            async for chunk in super().astream(input, config, stop=stop, **kwargs):
                yield chunk
        finally:
            _STREAM_RUN.set(None)

    def _stream_config(
        self, config: RunnableConfig | None, manager_cls: type[Any]
    ) -> RunnableConfig:
        config = ensure_config(config)
        manager = manager_cls.configure(
            config.get("callbacks"),
            self.callbacks,
            self.verbose,
            config.get("tags"),
            self.tags,
            config.get("metadata"),
            self.metadata,
        )
        return {
            **config,
            "run_id": config.get("run_id") or uuid4(),
            "callbacks": manager,
        }


class _Progress:
    """Where a run's progress events go.

    To the caller's handlers, as ``moa_progress`` custom events, and to the
    ``custom`` stream of the LangGraph node the ensemble runs in, if any.
    """

    def __init__(self, parent: Any, run_id: UUID | None, manager_cls: type[Any]) -> None:
        self.run_id = run_id
        self.manager = None
        if parent is not None and run_id is not None and parent.handlers:
            self.manager = manager_cls(handlers=list(parent.handlers), parent_run_id=run_id)
        self.writer = _outer_stream_writer()

    def stream_modes(self) -> dict[str, Any]:
        """What to stream from the graph: tokens, states and, if anyone listens, progress.

        Progress events come from the layer subgraphs, so only a listener pays
        for streaming them.
        """
        listening = self.manager is not None or self.writer is not None
        return {"stream_mode": ["custom", "values"], "subgraphs": listening}

    def send(self, event: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer({"moa_progress": event})
        if self.manager is not None:
            self.manager.on_custom_event(PROGRESS_EVENT, event, run_id=self.run_id)

    async def asend(self, event: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer({"moa_progress": event})
        if self.manager is not None:
            await self.manager.on_custom_event(PROGRESS_EVENT, event, run_id=self.run_id)


def _outer_stream_writer() -> Callable[[Any], None] | None:
    """The ``custom`` stream writer of the LangGraph node this call runs in, if any."""
    try:
        return get_stream_writer()
    except (RuntimeError, KeyError):  # not inside a LangGraph node
        return None


def _without_event(options: RunOptions) -> RunOptions:
    """Async runs are cancelled by task cancellation; they need no event."""
    return replace(options, cancelled=None)


def _classify(item: tuple[Any, ...]) -> tuple[str, Any]:
    """Sort one ``([namespace,] mode, payload)`` item of the graph's stream.

    Returns ``("token", AnswerToken)``, ``("progress", event dict)``, ``("state",
    state)`` for the top-level graph's state, or ``("other", payload)``.
    """
    namespace, mode, payload = item if len(item) == 3 else ((), *item)
    if mode == "custom":
        return ("token" if isinstance(payload, AnswerToken) else "progress"), payload
    return ("other" if namespace else "state"), payload


def _checked(state: MoAState | None) -> MoAState:
    if state is None or "aggregation" not in state:
        msg = "the Mixture-of-Agents graph ended without an answer"
        raise RuntimeError(msg)
    return state


def _run_parent(run_manager: Any) -> tuple[UUID | None, Any]:
    """The run that inner runs nest under, and a manager with its handlers.

    ``stream()``/``astream()`` hand their run over through ``_STREAM_RUN``
    because LangChain calls ``_stream`` without a run manager.
    """
    if run_manager is not None:
        return run_manager.run_id, run_manager
    handed_over = _STREAM_RUN.get()
    _STREAM_RUN.set(None)
    return handed_over if handed_over else (None, None)


def _token_chunk(token: AnswerToken) -> ChatGenerationChunk:
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


def _degraded(result: ChatResult) -> bool:
    return any(g.message.response_metadata.get("degraded") for g in result.generations)


def _setting_identity(value: Any) -> Any:
    """A setting as it enters the cache key: models by identity, long text hashed."""
    if isinstance(value, Runnable):
        return model_identity(value)
    if isinstance(value, AggregationStrategy):
        return value.identity
    if isinstance(value, (list, tuple)):
        return [_setting_identity(v) for v in value]
    if isinstance(value, str) and len(value) > 64:
        return "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def _iter_in_thread(
    context: contextvars.Context, make: Callable[[], Iterator[Any]], cancelled: threading.Event
) -> Iterator[Any]:
    """Iterate a sync graph stream that runs in a thread of its own, inside ``context``.

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


async def _aiter_in_context(
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
