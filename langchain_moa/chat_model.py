"""``MoAChatModel``: Mixture-of-Agents as a LangChain chat model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from functools import cached_property, partial
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from langchain_moa._compat import convert_cached_generations, openai_root_async_client
from langchain_moa.aggregation import AggregationStrategy
from langchain_moa.agreement import Agreement
from langchain_moa.caching import (
    NOT_IN_CACHE_KEY,
    active_cache,
    cache_key,
    degraded,
    setting_identity,
    uncached_twin,
)
from langchain_moa.callbacks import (
    InnerCallbacks,
    clear_handed_over_run,
    hand_over_run,
    stream_config,
)
from langchain_moa.cost import check_prices
from langchain_moa.graph import EngineSettings, build_moa_graph
from langchain_moa.inner_models import chat_model_of
from langchain_moa.prompts import (
    DEFAULT_AGGREGATOR_PROMPT,
    DEFAULT_RANKER_PROMPT,
    ReferenceFormat,
)
from langchain_moa.resilience import ConcurrencyLimit, RetryPolicy
from langchain_moa.runs import GraphRun, in_run_group, iter_in_run_group
from langchain_moa.selection import SelectionStrategy
from langchain_moa.state import MoAState
from langchain_moa.strategies import Rank, resolve_aggregation
from langchain_moa.structured_output import StructuredMethod, structured_runnable
from langchain_moa.validation import MAX_LAYERS, check_controls, check_line_up

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
    "prices": "prices",
    "max_cost_usd": "max_cost_usd",
    "max_total_tokens": "max_total_tokens",
    "select_references": "select_references",
    "selection_strategy": "selection_strategy",
    "selection_embeddings": "selection_embeddings",
    "selection_judge": "selection_judge",
    "early_stop": "early_stop",
    "circuit_breaker": "circuit_breaker",
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
    requests, threads and event loops, streamed or not. ``None``: no bound."""

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

    prices: dict[str, dict[str, float]] | None = None
    """Prices in US dollars per million tokens by model name, ``{"model": {"input":
    0.5, "output": 1.5}}`` (``"cache_read"`` optional). They override or add to the
    ``genai-prices`` database (the ``cost`` extra), for local and private models.
    A model with no price gets ``cost_usd: None``, never a guess."""

    max_cost_usd: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Most US dollars one call may spend, estimated before each proposer layer:
    when the rest of the run cannot fit, no more proposer layers run and the
    aggregator reads what the last one wrote; when not even the first layer and
    the aggregation fit, ``BudgetExceededError`` is raised before any provider is
    called. Needs a price for every model. A call's ``max_cost_usd=`` overrides it."""

    max_total_tokens: int | None = Field(default=None, ge=1)
    """Most tokens (input and output of every inner call) one call may spend;
    enforced as ``max_cost_usd``. A call's ``max_total_tokens=`` overrides it."""

    select_references: int | None = Field(default=None, ge=1)
    """How many of a layer's answers go on to the next layer and the aggregator
    (``None``: all), chosen by ``selection_strategy``; the answer's
    ``response_metadata["selection"]`` says which were kept and why."""

    selection_strategy: SelectionStrategy = "diverse"
    """How ``select_references`` chooses: ``"diverse"`` (greedy max-min diversity
    over ``selection_embeddings``, as RMoA), ``"judge"`` (``selection_judge``
    names the best, as SMoA's moderator) or ``"first"`` (the first to finish; the
    rest of the layer is cancelled)."""

    selection_embeddings: Embeddings | None = None
    """The LangChain ``Embeddings`` of ``selection_strategy="diverse"``."""

    selection_judge: Runnable | None = None
    """The (cheap) chat model of ``selection_strategy="judge"``; its tokens and
    dollars count in the answer's."""

    early_stop: Agreement | None = None
    """``Agreement(threshold=..., embeddings=...)``: once a layer's answers agree
    (mean pairwise cosine similarity at or above the threshold), the remaining
    proposer layers are skipped."""

    circuit_breaker: bool = True
    """A proposer that failed permanently (4xx, or every retry of a transient
    error) is not called again in later layers of the same call; it is recorded
    with ``CircuitOpenError`` and the first failure."""

    _profile_from_aggregator: bool = PrivateAttr(default=False)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, arbitrary_types_allowed=True)

    @model_validator(mode="before")
    @classmethod
    def _check_proposers(cls, values: Any) -> Any:
        if isinstance(values, dict):
            check_line_up(values)
            check_prices(values.get("prices"))
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
        check_controls(self)
        strategy = resolve_aggregation(self.aggregation)
        if strategy.runs_last_layer and (
            self.select_references is not None or self.early_stop is not None
        ):
            msg = (
                f"{strategy.name} cannot be combined with select_references/early_stop yet: "
                "it runs the last proposer layer inside the aggregation"
            )
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
            if name not in NOT_IN_CACHE_KEY:
                # LangChain's cache key overwrites "stop" with the call's stop.
                key = "stop_sequences" if name == "stop" else name
                identities[key] = setting_identity(getattr(self, name))
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
        cache = active_cache(self)
        if cache is None:
            return super()._generate_with_cache(messages, stop, run_manager, **kwargs)
        key = cache_key(self, messages, stop, kwargs)
        if isinstance(hit := cache.lookup(*key), list):
            return ChatResult(generations=convert_cached_generations(self, hit))
        twin = uncached_twin(self)
        result = BaseChatModel._generate_with_cache(twin, messages, stop, run_manager, **kwargs)
        if not degraded(result):
            cache.update(*key, result.generations)
        return result

    async def _agenerate_with_cache(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        cache = active_cache(self)
        if cache is None:
            return await super()._agenerate_with_cache(messages, stop, run_manager, **kwargs)
        key = cache_key(self, messages, stop, kwargs)
        if isinstance(hit := await cache.alookup(*key), list):
            return ChatResult(generations=convert_cached_generations(self, hit))
        twin = uncached_twin(self)
        result = await BaseChatModel._agenerate_with_cache(
            twin, messages, stop, run_manager, **kwargs
        )
        if not degraded(result):
            await cache.aupdate(*key, result.generations)
        return result

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        *_, state = GraphRun.prepare(self, messages, stop, run_manager, kwargs).iterate()
        return ChatResult(generations=[ChatGeneration(message=self._result(state))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        run = GraphRun.prepare(self, messages, stop, run_manager, kwargs, is_async=True)
        state = [item async for item in run.aiterate()][-1]
        return ChatResult(generations=[ChatGeneration(message=self._result(state))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        run = GraphRun.prepare(self, messages, stop, run_manager, kwargs, stream=True)
        for item in run.iterate():
            yield (item if isinstance(item, ChatGenerationChunk) else self._final_chunk(item))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        run = GraphRun.prepare(
            self, messages, stop, run_manager, kwargs, stream=True, is_async=True
        )
        async for item in run.aiterate():
            yield (item if isinstance(item, ChatGenerationChunk) else self._final_chunk(item))

    # -- batches that Ctrl-C ends ------------------------------------------------

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """``Runnable.batch``; Ctrl-C cancels every call's inner requests at once.

        LangChain's batch waits for its calls on the way out, so the calls are
        told first (a ``runs.RunGroup``).
        """
        batch = partial(super().batch, return_exceptions=return_exceptions, **kwargs)
        return in_run_group(partial(batch, inputs, config))

    def batch_as_completed(
        self,
        inputs: Sequence[LanguageModelInput],
        config: RunnableConfig | Sequence[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> Iterator[tuple[int, AIMessage | Exception]]:
        """``Runnable.batch_as_completed``; Ctrl-C or closing it cancels the calls at once."""
        batch = partial(super().batch_as_completed, return_exceptions=return_exceptions, **kwargs)
        yield from iter_in_run_group(partial(batch, inputs, config))

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
            hand_over_run(run_manager.run_id, run_manager)
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
        config = stream_config(self, config, CallbackManager)
        hand_over_run(config["run_id"], config["callbacks"])  # type: ignore[typeddict-item,arg-type]
        try:
            yield from super().stream(input, config, stop=stop, **kwargs)
        finally:
            clear_handed_over_run()

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """Stream the aggregator's answer; see ``BaseChatModel.astream``."""
        config = stream_config(self, config, AsyncCallbackManager)
        hand_over_run(config["run_id"], config["callbacks"])  # type: ignore[typeddict-item,arg-type]
        try:
            async for chunk in super().astream(input, config, stop=stop, **kwargs):
                yield chunk
        finally:
            clear_handed_over_run()
