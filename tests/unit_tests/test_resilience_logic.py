"""Pure logic of retries, error classification and the reference budget."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from types import SimpleNamespace

import h11
import httpcore
import httpx
import openai
import pytest

from langchain_moa.errors import describe_error, mask_exception, redact
from langchain_moa.prompts import fit_references
from langchain_moa.resilience import (
    LayerDeadlineError,
    LayerWatch,
    LayerWatches,
    ProposerTimeoutError,
    RetryPolicy,
    is_transient,
    retry_after_seconds,
)


def status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(status, headers=headers or {}, request=request)
    return openai.APIStatusError("boom", response=response, body=None)


@pytest.mark.parametrize(
    ("status", "transient"),
    [
        (429, True),
        (500, True),
        (503, True),
        (408, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (422, False),
    ],
)
def test_status_codes_are_classified(status: int, transient: bool) -> None:
    assert is_transient(status_error(status)) is transient


def test_connection_errors_are_transient_and_our_timeouts_are_not() -> None:
    request = httpx.Request("POST", "http://127.0.0.1/")
    assert is_transient(openai.APIConnectionError(request=request))
    assert is_transient(ConnectionResetError())
    assert not is_transient(ValueError("validation"))
    assert not is_transient(ProposerTimeoutError("x"))
    assert not is_transient(LayerDeadlineError("x"))


def test_retry_after_is_read_and_capped() -> None:
    assert retry_after_seconds(status_error(429, {"retry-after": "3"})) == 3.0
    assert retry_after_seconds(status_error(429)) is None
    policy = RetryPolicy(max_retries=3, base_delay=0.5, max_delay=2.0)
    assert policy.delay(1, status_error(429, {"retry-after": "30"})) == 2.0
    assert policy.delay(1, status_error(429, {"retry-after": "1"})) == 1.0


@pytest.mark.parametrize(("status", "transient"), [(503, True), (429, True), (400, False)])
def test_a_status_found_only_on_the_response_classifies_the_error(
    status: int, transient: bool
) -> None:
    # httpx's own HTTPStatusError carries the status on its response, not on itself.
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(status, request=request)
    error = httpx.HTTPStatusError("boom", request=request, response=response)
    assert is_transient(error) is transient


def test_errors_without_a_response_have_no_retry_after() -> None:
    assert retry_after_seconds(ConnectionResetError()) is None
    assert retry_after_seconds(ValueError("validation")) is None
    assert retry_after_seconds(RuntimeError("x")) is None


def test_retry_after_is_read_from_a_plain_lowercase_header_mapping() -> None:
    # HTTP/2 sends header names in lower case; a plain dict of them is honoured.
    error = RuntimeError("rate limited")
    error.response = SimpleNamespace(headers={"retry-after": "4"})  # type: ignore[attr-defined]
    assert retry_after_seconds(error) == 4.0


def test_a_masked_provider_error_keeps_its_retry_after_and_status() -> None:
    masked = mask_exception(status_error(429, {"retry-after": "2"}))
    assert retry_after_seconds(masked) == 2.0
    assert is_transient(masked)


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    later = datetime.now(timezone.utc) + timedelta(seconds=120)
    header = format_datetime(later, usegmt=True)
    before = time.time()
    seconds = retry_after_seconds(status_error(503, {"retry-after": header}))
    waited = time.time() - before
    assert seconds is not None
    assert 118.0 - waited <= seconds <= 120.0
    past = format_datetime(datetime.now(timezone.utc) - timedelta(hours=1), usegmt=True)
    assert retry_after_seconds(status_error(503, {"retry-after": past})) == 0.0


def test_a_zero_retry_after_means_retry_at_once() -> None:
    assert retry_after_seconds(status_error(429, {"retry-after": "0"})) == 0.0
    assert retry_after_seconds(status_error(429, {"retry-after": "-5"})) == 0.0


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "soon", ""])
def test_an_unusable_retry_after_is_ignored(value: str) -> None:
    assert retry_after_seconds(status_error(429, {"retry-after": value})) is None


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("peer closed connection"),
        httpcore.RemoteProtocolError("peer closed connection"),
        h11.RemoteProtocolError("peer closed connection"),
        openai.APITimeoutError(request=httpx.Request("POST", "http://127.0.0.1/")),
    ],
    ids=lambda error: f"{type(error).__module__}.{type(error).__name__}",
)
def test_transport_failures_of_every_http_layer_are_transient(error: Exception) -> None:
    assert is_transient(error)


def test_layer_watches_forget_closed_and_hour_old_runs() -> None:
    watches = LayerWatches()
    watches.open("run-1", 2.5, 2)
    watch = watches.get("run-1")
    assert watch is not None
    assert (watch.deadline, watch.quorum) == (2.5, 2)
    assert watches.get(None) is None
    assert watches.get("other") is None
    watches.close("run-1")
    watches.close(None)
    assert watches.get("run-1") is None

    watches.open("abandoned", None, 1)
    abandoned = watches.get("abandoned")
    assert abandoned is not None
    abandoned.started -= 3601.0  # a cancelled run that never closed its layer
    watches.open("fresh", None, 1)
    assert watches.get("abandoned") is None
    watches.open("concurrent", None, 1)
    assert watches.get("fresh") is not None  # a live run's watch is kept
    assert watches.get("concurrent") is not None


def test_time_left_before_a_layer_deadline_counts_down_to_zero() -> None:
    assert LayerWatch(None, 1).until_deadline() is None
    left = LayerWatch(30.0, 1).until_deadline()
    assert left is not None
    assert 25.0 <= left <= 30.0
    late = LayerWatch(5.0, 1, started=time.monotonic() - 60.0)
    assert late.until_deadline() == 0.0


def test_backoff_doubles_with_jitter() -> None:
    policy = RetryPolicy(max_retries=5, base_delay=1.0, max_delay=100.0)
    error = status_error(500)
    for attempt in (1, 2, 3):
        delays = [policy.delay(attempt, error) for _ in range(50)]
        base = 2 ** (attempt - 1)
        assert all(0.5 * base <= d <= 1.5 * base for d in delays)
        assert len(set(delays)) > 1


def test_fit_references_water_fills() -> None:
    refs = ["short", "m" * 100, "l" * 1000]
    fitted = fit_references(refs, 205)
    assert fitted[0] == "short"
    assert fitted[1] == "m" * 100
    assert fitted[2] == "l" * 100 + "[... truncated 900 characters]"
    even = fit_references(["a" * 500, "b" * 500], 300)
    assert even == [
        "a" * 150 + "[... truncated 350 characters]",
        "b" * 150 + "[... truncated 350 characters]",
    ]
    assert fit_references(refs, None) == refs
    assert fit_references(refs, 10_000) == refs


def test_secrets_are_masked_in_error_texts() -> None:
    assert "sk-live" not in redact("Incorrect API key provided: sk-live-abcdef123456")
    assert redact("Authorization: Bearer abc.def-ghi") == "Authorization: Bearer [REDACTED]"
    assert describe_error(RuntimeError("key tgp_v1_abcdefgh was refused")) == (
        "RuntimeError: key [REDACTED] was refused"
    )
