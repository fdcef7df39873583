"""Pure logic of retries, error classification and the reference budget."""

from __future__ import annotations

import httpx
import openai
import pytest

from langchain_moa.errors import describe_error, redact
from langchain_moa.prompts import fit_references
from langchain_moa.resilience import (
    LayerDeadlineError,
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
