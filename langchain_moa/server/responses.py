"""The ensemble's answer in the wire format: completions, chunks, usage, MoA details.

The ``moa`` extension field carries what ``response_metadata`` holds about the
run: ``proposals`` (per proposer layer, each proposal's model, text, usage,
latency, error and attempts), ``aggregator`` (the same for the aggregator's
call, with ``fallback_from`` when the fallback answered), ``failed_proposers``,
``degraded`` and, with ``aggregation="rank"``, ``ranker``. Clients that do not
know it ignore it (the ``openai`` client keeps it in ``model_extra``).
Upstream addresses in it (cost reasons, errors) are replaced with
``[upstream]`` unless ``expose_upstream`` (see :mod:`langchain_moa.server.upstream`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.ai import UsageMetadata

from langchain_moa.server.upstream import hide_upstream_in
from langchain_moa.wire import (
    assistant_message,
    chunk_body,
    chunk_choice,
    completion_body,
    tool_call_object,
)

SYSTEM_FINGERPRINT = "fp_langchain_moa"
"""The ``system_fingerprint`` of every answer."""

_NOT_DETAILS = frozenset({"model_name", "finish_reason", "model_provider", "system_fingerprint"})


def usage_object(usage: UsageMetadata | None) -> dict[str, Any] | None:
    """OpenAI's ``usage`` from LangChain's ``usage_metadata`` (``None`` if unknown).

    Args:
        usage: The ensemble's summed usage of every inner call.

    Returns:
        ``prompt_tokens``, ``completion_tokens``, ``total_tokens`` and, when
        known, ``prompt_tokens_details.cached_tokens`` and
        ``completion_tokens_details.reasoning_tokens``.
    """
    if not usage:
        return None
    result: dict[str, Any] = {
        "prompt_tokens": usage.get("input_tokens", 0),
        "completion_tokens": usage.get("output_tokens", 0),
        "total_tokens": usage.get("total_tokens", 0),
    }
    cached = (usage.get("input_token_details") or {}).get("cache_read")
    if cached is not None:
        result["prompt_tokens_details"] = {"cached_tokens": cached}
    reasoning = (usage.get("output_token_details") or {}).get("reasoning")
    if reasoning is not None:
        result["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return result


def moa_details(
    response_metadata: Mapping[str, Any], *, expose_upstream: bool = False
) -> dict[str, Any]:
    """The ``moa`` extension field: the run's record from ``response_metadata``.

    Args:
        response_metadata: The answer's metadata.
        expose_upstream: Keep upstream addresses (by default each is replaced).
    """
    details = {k: v for k, v in response_metadata.items() if k not in _NOT_DETAILS}
    return details if expose_upstream else hide_upstream_in(details)


def _tool_calls(message: AIMessage) -> list[dict[str, Any]]:
    raw = message.additional_kwargs.get("tool_calls")
    if isinstance(raw, list) and raw:
        return [
            tool_call_object(
                call.get("id") or f"call_{i}",
                call["function"]["name"],
                call["function"].get("arguments") or "",
            )
            for i, call in enumerate(raw)
        ]
    calls = [
        tool_call_object(call.get("id") or f"call_{i}", call["name"], json.dumps(call["args"]))
        for i, call in enumerate(message.tool_calls)
    ]
    calls.extend(
        tool_call_object(
            call.get("id") or f"invalid_{i}", call.get("name") or "", call["args"] or ""
        )
        for i, call in enumerate(message.invalid_tool_calls)
    )
    return calls


def finish_reason(metadata: Mapping[str, Any], *, has_tool_calls: bool) -> str:
    """The answer's ``finish_reason``: the aggregator's, else what the answer shows."""
    reason = metadata.get("finish_reason")
    if isinstance(reason, str) and reason:
        return reason
    return "tool_calls" if has_tool_calls else "stop"


def completion(
    message: AIMessage,
    *,
    response_id: str,
    created: int,
    model: str,
    details: bool,
    expose_upstream: bool = False,
) -> dict[str, Any]:
    """The ``chat.completion`` body of the ensemble's answer.

    Args:
        message: What the ensemble returned.
        response_id: ``chatcmpl-...``.
        created: Unix time.
        model: The ensemble's served name.
        details: Whether to add the ``moa`` extension field.
        expose_upstream: Keep upstream addresses in it.

    Returns:
        The JSON-ready body.
    """
    calls = _tool_calls(message)
    text = message.text
    body = completion_body(
        response_id=response_id,
        created=created,
        model=model,
        message=assistant_message(text if text or not calls else None, calls),
        finish_reason=finish_reason(message.response_metadata, has_tool_calls=bool(calls)),
        usage=usage_object(message.usage_metadata),
        system_fingerprint=SYSTEM_FINGERPRINT,
    )
    if details:
        body["moa"] = moa_details(message.response_metadata, expose_upstream=expose_upstream)
    return body


class ChunkWriter:
    """Turns the ensemble's streamed ``AIMessageChunk``s into wire chunks.

    The first chunk carries ``role: assistant``; a tool call's first delta
    carries its ``id``, ``type`` and name, later ones only argument text. After
    the ensemble's last chunk, :meth:`closing` gives the ``finish_reason``
    chunk and, if asked for, the usage chunk; the ``moa`` field goes on the
    last of them.

    Args:
        response_id: The ``id`` of every chunk.
        created: Unix time.
        model: The ensemble's served name.
        include_usage: ``stream_options.include_usage``.
        details: Whether to add the ``moa`` extension field.
        expose_upstream: Keep upstream addresses in it.
    """

    def __init__(
        self,
        *,
        response_id: str,
        created: int,
        model: str,
        include_usage: bool,
        details: bool,
        expose_upstream: bool = False,
    ) -> None:
        self._common = {
            "response_id": response_id,
            "created": created,
            "model": model,
            "include_usage": include_usage,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        self._details = details
        self._expose_upstream = expose_upstream
        self._include_usage = include_usage
        self._started = False
        self._calls: dict[int, str] = {}
        self._usage: UsageMetadata | None = None
        self._metadata: dict[str, Any] = {}

    def _chunk(self, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        return chunk_body(choices=[chunk_choice(delta, reason)], **self._common)

    def _tool_deltas(self, chunk: AIMessageChunk) -> list[dict[str, Any]]:
        deltas = []
        for position, call in enumerate(chunk.tool_call_chunks):
            index = call.get("index")
            index = index if isinstance(index, int) else len(self._calls) + position
            arguments = call.get("args") or ""
            if index not in self._calls:
                self._calls[index] = call.get("id") or f"call_{index}"
                entry = tool_call_object(self._calls[index], call.get("name") or "", arguments)
                deltas.append({"index": index, **entry})
            else:
                deltas.append({"index": index, "function": {"arguments": arguments}})
        return deltas

    def chunks(self, chunk: AIMessageChunk) -> list[dict[str, Any]]:
        """The wire chunks for one of the ensemble's chunks (often one, maybe none)."""
        if chunk.usage_metadata:
            self._usage = chunk.usage_metadata
        if chunk.response_metadata:
            self._metadata.update(chunk.response_metadata)
        delta: dict[str, Any] = {}
        text = chunk.text
        tool_deltas = self._tool_deltas(chunk)
        if text:
            delta["content"] = text
        if tool_deltas:
            delta["tool_calls"] = tool_deltas
        if not self._started:
            self._started = True
            delta = {"role": "assistant", "content": text or ("" if not tool_deltas else None)}
            if tool_deltas:
                delta["tool_calls"] = tool_deltas
            return [self._chunk(delta)]
        return [self._chunk(delta)] if delta else []

    def closing(self) -> list[dict[str, Any]]:
        """The last chunks: ``finish_reason`` and, if asked for, usage."""
        chunks = []
        if not self._started:
            self._started = True
            chunks.append(self._chunk({"role": "assistant", "content": ""}))
        reason = finish_reason(self._metadata, has_tool_calls=bool(self._calls))
        chunks.append(self._chunk({}, reason))
        if self._include_usage:
            usage = usage_object(self._usage)
            chunks.append(chunk_body(choices=[], usage=usage, **self._common))
        if self._details:
            chunks[-1]["moa"] = moa_details(self._metadata, expose_upstream=self._expose_upstream)
        return chunks
