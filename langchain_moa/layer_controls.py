"""The cost controls, applied where a proposer layer starts and ends.

* ``start`` (:meth:`LayerControls.before`): a layer after an early stop is
  skipped; with a budget, the layer and the aggregation after it are
  estimated and, if they cannot fit, no more layers run (or, before the first
  layer, :class:`~langchain_moa.budget.BudgetExceededError` is raised).
* each proposer (:meth:`LayerControls.guard`): a proposer that failed
  permanently in an earlier layer is not called again (the circuit breaker),
  and a permanent failure is noted for later layers.
* ``finish`` (:meth:`LayerControls.after`): reference selection keeps k of the
  layer's answers, and early stop compares the kept answers.

Everything decided is written to the ``controls`` channel (see ``notes``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.config import get_stream_writer

from langchain_moa.budget import (
    Budget,
    BudgetExceededError,
    Estimate,
    call_estimate,
    completion_cap,
    prompt_tokens,
    spent,
)
from langchain_moa.calls import InnerCall
from langchain_moa.errors import describe_error
from langchain_moa.events import ProposerFinished, event_to_dict
from langchain_moa.inner_models import model_label
from langchain_moa.notes import CONTROLS, notes_of, stopped_after
from langchain_moa.prompts import inject_references
from langchain_moa.resilience import CallLimits, ProposerTimeoutError
from langchain_moa.selection import (
    Selection,
    judge_messages,
    judged,
    mean_pairwise_similarity,
    select_diverse,
    select_first,
)
from langchain_moa.state import Proposal

CIRCUIT_OPEN = "CircuitOpenError"
"""The error type of a proposer the circuit breaker did not call."""

NOT_SELECTED = "NotSelectedError"
"""The error type of a straggler cancelled by ``select_references`` with ``"first"``."""

# Failures that say nothing about the model itself: the ensemble's own limits,
# an answer that came back empty or cut, and the controls' own records.
_NOT_PERMANENT = frozenset(
    {
        "ProposerTimeoutError",
        "LayerDeadlineError",
        "EmptyAnswerError",
        "IncompleteAnswerError",
        "StreamBrokenError",
        CIRCUIT_OPEN,
        NOT_SELECTED,
    }
)

InnerConfig = Callable[[RunnableConfig, str, dict[str, Any], tuple[str, ...]], RunnableConfig]


def permanent_failure(proposal: Proposal) -> bool:
    """Whether a proposer failed for good: a permanent error, or every retry failed.

    The retry layer gives up only on those two, so any recorded failure counts,
    except a timeout, a layer-deadline cut and an empty or cut-off answer.
    """
    if proposal.error is None:
        return False
    kind = proposal.error.split(":", 1)[0].strip()
    return kind not in _NOT_PERMANENT


@dataclass
class RunControls:
    """The controls of one compiled graph: settings and the line-up they estimate with.

    Attributes:
        settings: The engine settings (``EngineSettings``).
        proposer_layers: The proposer models of each layer, as the graph calls them.
        aggregator: The aggregator.
        background: The sync path's model copies (for the selection judge).
        inner_config: Builds an inner call's config (run name, metadata, tags).
    """

    settings: Any
    proposer_layers: Sequence[Sequence[Runnable]]
    aggregator: Runnable
    background: Any
    inner_config: InnerConfig

    def budget(self, options: Any) -> Budget:
        """The call's budget: its own arguments, else the ensemble's fields."""
        cost = getattr(options, "max_cost_usd", None)
        tokens = getattr(options, "max_total_tokens", None)
        return Budget(
            cost if cost is not None else self.settings.max_cost_usd,
            tokens if tokens is not None else self.settings.max_total_tokens,
        )

    def layer(self, layer: int) -> LayerControls:
        """The controls of proposer layer ``layer`` (from 1)."""
        models = list(self.proposer_layers[layer - 1])
        return LayerControls(layer, models, [model_label(m) for m in models], self)


@dataclass
class _Finish:
    """What a layer's ``finish`` decides; embeddings and the judge are filled in by the caller."""

    controls: LayerControls
    state: Mapping[str, Any]
    options: Any
    answered: list[Proposal] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    kept: list[Proposal] = field(default_factory=list)
    selection_vectors: list[list[float]] | None = None
    selection_error: str | None = None
    judge_reply: AIMessage | None = None
    judge_error: str | None = None
    agreement_vectors: list[list[float]] | None = None
    agreement_error: str | None = None

    def __post_init__(self) -> None:
        layer = self.controls.layer
        self.answered = [p for p in self.state.get("proposals", []) if p.layer == layer and p.ok]
        self.kept = list(self.answered)

    @property
    def settings(self) -> Any:
        return self.controls.run.settings

    @property
    def k(self) -> int | None:
        return self.settings.select_references

    @property
    def selecting(self) -> bool:
        return self.k is not None and len(self.answered) > self.k

    @property
    def strategy(self) -> str:
        return self.settings.selection_strategy

    def needs_selection_embeddings(self) -> bool:
        return self.selecting and self.strategy == "diverse"

    def needs_judge(self) -> bool:
        return self.selecting and self.strategy == "judge"

    def texts(self, proposals: Sequence[Proposal]) -> list[str]:
        return [p.text or "" for p in proposals]

    def select(self) -> None:
        """Choose the kept proposals (with the embeddings or judge reply filled in)."""
        if self.k is None:
            return
        candidates = self.answered
        reason = None
        selection: Selection | None = None
        if not self.selecting:
            selection = (list(range(len(candidates))), {})
            reason = f"all kept: {len(candidates)} answered, select_references={self.k}"
        elif self.strategy == "first":
            selection = select_first([p.latency_s for p in candidates], self.k)
        elif self.strategy == "diverse" and self.selection_vectors is not None:
            selection = select_diverse(self.selection_vectors, self.k)
        elif self.strategy == "judge" and self.judge_reply is not None:
            selection = judged(self.judge_reply.text, len(candidates), self.k)
            if selection is None:
                reason = f"the judge named no proposal ({self.judge_reply.text[:80]!r})"
        if selection is None:
            cause = self.selection_error or self.judge_error or reason
            selection = (list(range(self.k)), {})
            reason = f"the first {self.k} in order were kept: {cause}"
        positions, reasons = selection
        self.kept = [candidates[i] for i in positions]
        entry: dict[str, Any] = {
            "strategy": self.strategy,
            "indices": [p.index for p in self.kept],
            "dropped": [p.index for p in candidates if p not in self.kept],
            "reasons": {candidates[i].index: why for i, why in reasons.items()},
        }
        if reason is not None:
            entry["note"] = reason
        self.notes.setdefault("kept", {})[self.controls.layer] = entry

    def needs_agreement_vectors(self) -> bool:
        early = self.settings.early_stop
        last = len(self.controls.run.proposer_layers)
        return early is not None and self.controls.layer < last and len(self.kept) >= 2

    def reusable_vectors(self) -> list[list[float]] | None:
        """The selection's embeddings of the kept proposals, if they are the same model's."""
        early = self.settings.early_stop
        same = early is not None and early.embeddings is self.settings.selection_embeddings
        if not same or self.selection_vectors is None:
            return None
        return [self.selection_vectors[self.answered.index(p)] for p in self.kept]

    def agree(self) -> None:
        """Compare the kept proposals; stop adding layers if they agree."""
        if not self.needs_agreement_vectors():
            return
        threshold = self.settings.early_stop.threshold
        layer = self.controls.layer
        if self.agreement_vectors is None:
            self.notes.setdefault("agreement", {})[layer] = {
                "similarity": None,
                "threshold": threshold,
                "error": self.agreement_error,
            }
            return
        similarity = round(mean_pairwise_similarity(self.agreement_vectors), 6)
        self.notes.setdefault("agreement", {})[layer] = {
            "similarity": similarity,
            "threshold": threshold,
        }
        if similarity >= threshold:
            self.notes["stopped_after"] = layer
            self.notes["stop_reason"] = "agreement"

    def record_spend(self) -> None:
        """Note what this layer spent (read by the next layer's budget check)."""
        if not self.controls.run.budget(self.options).active:
            return
        run = self.controls.run
        layer = self.controls.layer
        records = [
            (self.controls.models[p.index], p.model, p.usage)
            for p in self.state.get("proposals", [])
            if p.layer == layer
        ]
        judge = (self.notes.get("judge") or {}).get(layer)
        if judge is not None:
            records.append((run.settings.selection_judge, judge["model"], judge.get("usage")))
        total = spent(records, run.settings.prices)
        self.notes.setdefault("spent", {})[layer] = total.to_dict()

    def record_judge(self, reply: AIMessage | None, error: str | None) -> None:
        judge = self.settings.selection_judge
        usage = reply.usage_metadata if reply is not None else None
        self.notes.setdefault("judge", {})[self.controls.layer] = {
            "model": model_label(judge),
            "usage": dict(usage) if usage else None,
            "output": reply.text if reply is not None else None,
            "error": error,
        }

    def update(self) -> dict[str, Any]:
        self.record_spend()
        return {CONTROLS: self.notes} if self.notes else {}


@dataclass
class LayerControls:
    """The controls of one proposer layer.

    Attributes:
        layer: The layer, from 1.
        models: Its proposers, as the graph calls them.
        labels: Their names.
        run: The graph's controls.
    """

    layer: int
    models: list[Runnable]
    labels: list[str]
    run: RunControls

    # -- start -----------------------------------------------------------------

    def skipped(self, state: Mapping[str, Any]) -> bool:
        """Whether this layer does not run (an earlier stop)."""
        stopped = stopped_after(state)
        return stopped is not None and stopped < self.layer

    def watch(self) -> tuple[float | None, int]:
        """The layer watch's deadline and quorum (``"first"`` cuts once k answered)."""
        settings = self.run.settings
        k = settings.select_references
        if settings.selection_strategy == "first" and k is not None and k < len(self.models):
            return 0.0, max(k, settings.min_proposers)
        return settings.layer_deadline, settings.min_proposers

    def before(self, state: Mapping[str, Any], options: Any) -> tuple[dict[str, Any], bool]:
        """Decide whether the layer runs.

        Returns:
            The state update, and whether the layer is skipped.

        Raises:
            BudgetExceededError: Before the first layer, when it and the
                aggregation cannot fit the budget.
        """
        if self.skipped(state):
            return {}, True
        budget = self.run.budget(options)
        if not budget.active:
            return {}, False
        so_far = Estimate()
        for entry in (notes_of(state).get("spent") or {}).values():
            so_far += Estimate(entry["tokens"], entry["usd"])
        layer_estimate = self._layer_estimate(state)
        aggregation = self._aggregation_estimate(state, options)
        needed = so_far + layer_estimate + aggregation
        fits = budget.fits(needed.usd, needed.tokens)
        check = {
            "spent_before": so_far.to_dict(),
            "layer_estimate": layer_estimate.to_dict(),
            "aggregation_estimate": aggregation.to_dict(),
            "ran": fits,
        }
        notes: dict[str, Any] = {"budget_limits": budget.to_dict(), "budget": {self.layer: check}}
        if not fits and self.layer == 1:
            raise BudgetExceededError(
                {**needed.to_dict(), "unpriced": list(needed.unpriced)}, budget.to_dict()
            )
        if not fits:
            notes.update(stopped_after=self.layer - 1, stop_reason="budget")
        return {CONTROLS: notes}, not fits

    def _tripped(self, state: Mapping[str, Any]) -> Mapping[str, Any]:
        return notes_of(state).get("tripped") or {}

    def _layer_estimate(self, state: Mapping[str, Any]) -> Estimate:
        settings = self.run.settings
        messages = settings.messages(state, self.layer - 1, settings.prompt)
        tripped = self._tripped(state) if settings.circuit_breaker else {}
        total = Estimate()
        for model, label in zip(self.models, self.labels, strict=True):
            if label in tripped:
                continue
            cap = completion_cap(model, settings.call_kwargs)
            total += call_estimate(
                model, label, prompt_tokens(model, messages), cap, settings.prices
            )
        if settings.select_references is not None and settings.selection_strategy == "judge":
            total += self._judge_estimate(state)
        return total

    def _references_after(self) -> tuple[int, int]:
        """How many references the next reader gets at most, and the longest one's tokens."""
        settings = self.run.settings
        count = len(self.models)
        if settings.select_references is not None:
            count = min(count, settings.select_references)
        longest = max(completion_cap(m, settings.call_kwargs) for m in self.models)
        return count, longest

    def _judge_estimate(self, state: Mapping[str, Any]) -> Estimate:
        settings = self.run.settings
        judge = settings.selection_judge
        _, longest = self._references_after()
        conversation = state["messages"]
        tokens = prompt_tokens(judge, conversation) + len(self.models) * longest
        cap = completion_cap(judge, {})
        return call_estimate(judge, model_label(judge), tokens, cap, settings.prices)

    def _aggregation_estimate(self, state: Mapping[str, Any], options: Any) -> Estimate:
        settings = self.run.settings
        aggregator = self.run.aggregator
        count, longest = self._references_after()
        prompt = settings.ranker_prompt or settings.prompt
        messages = inject_references(state["messages"], [""] * count, prompt)
        tokens = prompt_tokens(aggregator, messages) + count * longest
        kwargs = {
            **settings.call_kwargs,
            **settings.aggregator_call_kwargs,
            **getattr(options, "aggregator_kwargs", {}),
        }
        cap = completion_cap(aggregator, kwargs)
        return call_estimate(aggregator, model_label(aggregator), tokens, cap, settings.prices)

    # -- proposers ---------------------------------------------------------------

    def guard(self, node: Any) -> tuple[Callable[..., dict], Callable[..., Awaitable[dict]]]:
        """Wrap a proposer node: skipped layers and open circuits make no call."""

        def invoke(state: Mapping[str, Any], config: RunnableConfig) -> dict:
            skip = self._skip(node, state)
            return skip if skip is not None else self._checked(node, node.invoke(state, config))

        async def ainvoke(state: Mapping[str, Any], config: RunnableConfig) -> dict:
            skip = self._skip(node, state)
            if skip is not None:
                return skip
            return self._checked(node, await node.ainvoke(state, config))

        return invoke, ainvoke

    def _skip(self, node: Any, state: Mapping[str, Any]) -> dict | None:
        if self.skipped(state):
            return {}
        if not self.run.settings.circuit_breaker:
            return None
        tripped = self._tripped(state).get(node.label)
        if tripped is None:
            return None
        proposal = Proposal(
            layer=self.layer,
            index=node.index,
            model=node.label,
            text=None,
            usage=None,
            latency_s=0.0,
            error=(
                f"{CIRCUIT_OPEN}: not called: it failed permanently in layer "
                f"{tripped['layer']} ({tripped['error']})"
            ),
            attempts=0,
        )
        get_stream_writer()(event_to_dict(ProposerFinished(proposal)))
        return {"proposals": [proposal]}

    def _checked(self, node: Any, update: dict) -> dict:
        proposals = update.get("proposals") or []
        if not proposals:
            return update
        proposal = proposals[0]
        settings = self.run.settings
        if (
            proposal.error
            and proposal.error.startswith("LayerDeadlineError")
            and (self.watch()[0] == 0.0 and settings.layer_deadline is None)
        ):
            k = settings.select_references
            error = f"{NOT_SELECTED}: cancelled once the first {k} had answered (select_references)"
            update = {**update, "proposals": [_replace_error(proposal, error)]}
        elif settings.circuit_breaker and permanent_failure(proposal):
            tripped = {"layer": self.layer, "index": node.index, "error": proposal.error}
            update = {**update, CONTROLS: {"tripped": {node.label: tripped}}}
        return update

    # -- finish ---------------------------------------------------------------------

    def after(self, state: Mapping[str, Any], config: RunnableConfig, options: Any) -> dict:
        """Select the references and check agreement (sync path)."""
        step = _Finish(self, state, options)
        if step.needs_selection_embeddings():
            step.selection_vectors, step.selection_error = _embed(
                self.run.settings.selection_embeddings, step.texts(step.answered)
            )
        if step.needs_judge():
            call = self._judge_call(step, config, options)
            try:
                reply = call.run_sync(self.run.background.for_model(call.model))
            except Exception as error:
                step.judge_error = f"the judge failed: {describe_error(error)}"
                step.record_judge(None, step.judge_error)
            else:
                step.judge_reply = reply if isinstance(reply, AIMessage) else None
                step.record_judge(step.judge_reply, None)
        step.select()
        if step.needs_agreement_vectors():
            step.agreement_vectors = step.reusable_vectors()
            if step.agreement_vectors is None:
                step.agreement_vectors, step.agreement_error = _embed(
                    self.run.settings.early_stop.embeddings, step.texts(step.kept)
                )
        step.agree()
        return step.update()

    async def aafter(self, state: Mapping[str, Any], config: RunnableConfig, options: Any) -> dict:
        """Select the references and check agreement (async path)."""
        step = _Finish(self, state, options)
        if step.needs_selection_embeddings():
            step.selection_vectors, step.selection_error = await _aembed(
                self.run.settings.selection_embeddings, step.texts(step.answered)
            )
        if step.needs_judge():
            call = self._judge_call(step, config, options)
            try:
                reply = await call.run_async()
            except Exception as error:
                step.judge_error = f"the judge failed: {describe_error(error)}"
                step.record_judge(None, step.judge_error)
            else:
                step.judge_reply = reply if isinstance(reply, AIMessage) else None
                step.record_judge(step.judge_reply, None)
        step.select()
        if step.needs_agreement_vectors():
            step.agreement_vectors = step.reusable_vectors()
            if step.agreement_vectors is None:
                step.agreement_vectors, step.agreement_error = await _aembed(
                    self.run.settings.early_stop.embeddings, step.texts(step.kept)
                )
        step.agree()
        return step.update()

    def _judge_call(self, step: _Finish, config: RunnableConfig, options: Any) -> InnerCall:
        settings = self.run.settings
        judge = settings.selection_judge
        label = model_label(judge)
        messages: list[BaseMessage] = judge_messages(
            step.state["messages"], step.texts(step.answered), step.k
        )
        metadata = {"moa_layer": self.layer, "moa_model": label, "moa_role": "selection_judge"}
        tags = tuple(getattr(options, "proposer_tags", ("nostream",)))
        inner = self.run.inner_config(
            config, f"layer {self.layer} · judge · {label}", metadata, tags
        )
        limits = CallLimits(
            retry=settings.retry,
            timeout=settings.proposer_timeout,
            timeout_error=ProposerTimeoutError,
            limit=settings.limit,
            cancelled=getattr(options, "cancelled", None),
        )
        return InnerCall(lambda model: model, judge, messages, inner, limits)


def _replace_error(proposal: Proposal, error: str) -> Proposal:
    return replace(proposal, error=error)


def _embed(embeddings: Any, texts: list[str]) -> tuple[list[list[float]] | None, str | None]:
    try:
        return [list(v) for v in embeddings.embed_documents(texts)], None
    except Exception as error:
        return None, f"the embeddings failed: {describe_error(error)}"


async def _aembed(embeddings: Any, texts: list[str]) -> tuple[list[list[float]] | None, str | None]:
    try:
        return [list(v) for v in await embeddings.aembed_documents(texts)], None
    except Exception as error:
        return None, f"the embeddings failed: {describe_error(error)}"
