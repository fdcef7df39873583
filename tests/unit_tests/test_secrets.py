"""Masking of secrets: ``redact``, ``describe_error`` and ``mask_exception``."""

from __future__ import annotations

import base64
import pickle
import traceback

import httpx
import openai
import pytest

from langchain_moa.errors import (
    REDACTED,
    AggregatorFailedError,
    ProposersFailedError,
    ProviderError,
    describe_error,
    mask_exception,
    redact,
)
from langchain_moa.state import Proposal

OPENAI_KEY = "sk-proj-Secret0123456789abcdefXYZ"
GITHUB_TOKEN = "ghp_" + "Zx9Yw8" * 6
HF_TOKEN = "hf_" + "AbCdEf0123" * 3 + "wxyz"
GOOGLE_KEY = "AIzaSyA1234567890abcdefghijklmnopqrstu"
HEX_KEY = "0123456789abcdef" * 4
BASIC = base64.b64encode(b"alice:s3cr3t-pw").decode()

# (text, secret that must disappear)
POSITIVE = [
    (f"Incorrect API key provided: {OPENAI_KEY}.", OPENAI_KEY),
    ("Incorrect API key provided: sk-proj-****************abcd", "sk-proj-****"),
    ("key tgp_v1_abcdefgh was refused", "tgp_v1_abcdefgh"),
    ("groq gsk_abcdef1234567890", "gsk_abcdef1234567890"),
    (f"apikey_{OPENAI_KEY}", OPENAI_KEY),
    (f"key={OPENAI_KEY}&x=1", OPENAI_KEY),
    (f"together key {HEX_KEY}", HEX_KEY),
    (f"md5 {HEX_KEY[:32]}", HEX_KEY[:32]),
    (f"key: {GOOGLE_KEY}", GOOGLE_KEY),
    (f"https://example.com/v1?key={GOOGLE_KEY}", GOOGLE_KEY),
    (f"Basic {BASIC}", BASIC),
    (f"Authorization: Basic {BASIC}", BASIC),
    (f"token {GITHUB_TOKEN} has expired", GITHUB_TOKEN),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopq", "github_pat_11ABCDEFG"),
    (f"repo token={HF_TOKEN}", HF_TOKEN),
    ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
    ("bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-nature_", "eyJhbGciOiJIUzI1NiJ9"),
    (f"headers={{'Authorization': 'Bearer {OPENAI_KEY}'}}", OPENAI_KEY),
    ("x-api-key: plainsecretvalue", "plainsecretvalue"),
    ('{"api_key": "opaque-secret-1"}', "opaque-secret-1"),
    ("client_secret=abcd1234efgh", "abcd1234efgh"),
    ("password: hunter22", "hunter22"),
    ("https://alice:hunter22@proxy.example.com:8080/", "hunter22"),
    ("mistral key aB3dE5gH7jK9mN1pQ3rS5tU7vW9xY1zA2", "aB3dE5gH7jK9mN1pQ3rS5tU7vW9xY1zA2"),
    ("https://proxy.example.com/v1?token=opaque-value-1&x=2", "opaque-value-1"),
    ("GET /stream?key=plainsecret HTTP/1.1", "plainsecret"),
    ('{"token": "abcd1234efgh"}', "abcd1234efgh"),
    ("secret=letmein99", "letmein99"),
    ("pwd=hunter22", "hunter22"),
]

# Texts that must come back unchanged.
NEGATIVE = [
    "id 123e4567-e89b-12d3-a456-426614174000 not found",
    "Basic authentication failed",
    "the bearer of bad news",
    "Bearer token missing",
    "task-force desk-lamp risk_assessment sk-learn",
    "request req_0123456789abcdef0123456789abcdef failed",
    "ChatCompletionMessageToolCallParamAndMoreWords",
    "Authorization failed: check your key",
    "Error code: 429 - rate limit exceeded, retry in 20s",
    "model gpt-4o-mini, temperature 0.7, max_tokens=512",
    "deadbeef cafe 1234567890",
    "monkey=banana; hotkey=ctrl; max_tokens=512",
]


@pytest.mark.parametrize(("text", "secret"), POSITIVE)
def test_redact_masks_secrets(text: str, secret: str) -> None:
    masked = redact(text)
    assert secret not in masked
    assert REDACTED in masked
    assert redact(masked) == masked


@pytest.mark.parametrize("text", NEGATIVE)
def test_redact_keeps_ordinary_text(text: str) -> None:
    assert redact(text) == text


def test_redact_keeps_context() -> None:
    assert redact("Authorization: Bearer abc.def-ghi") == "Authorization: Bearer [REDACTED]"
    assert redact(f"Basic {BASIC}") == "Basic [REDACTED]"
    assert redact(f"apikey_{OPENAI_KEY}") == "apikey_[REDACTED]"
    assert redact("https://alice:pw12@host/") == "https://alice:[REDACTED]@host/"


def test_describe_error_masks_and_survives_masking() -> None:
    error = RuntimeError(f"key {GITHUB_TOKEN} was refused")
    assert describe_error(error) == "RuntimeError: key [REDACTED] was refused"
    assert describe_error(mask_exception(error)) == describe_error(error)


def _authentication_error() -> openai.AuthenticationError:
    """An OpenAI 401 whose request, response and body all hold the key."""
    request = httpx.Request(
        "POST",
        "https://api.openai.com/v1/chat/completions",
        headers={"Authorization": f"Bearer {OPENAI_KEY}"},
    )
    body = {
        "error": {
            "message": f"Incorrect API key provided: {OPENAI_KEY}.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    response = httpx.Response(
        401,
        json=body,
        request=request,
        headers={"retry-after": "7", "x-request-id": "req_abc123"},
    )
    return openai.AuthenticationError(f"Error code: 401 - {body}", response=response, body=body)


def _raise_chain() -> None:
    try:
        msg = f"token {GITHUB_TOKEN} rejected for {HF_TOKEN}"
        raise ValueError(msg)
    except ValueError as error:
        raise _authentication_error() from error


def _chained_error() -> openai.AuthenticationError:
    with pytest.raises(openai.AuthenticationError) as info:
        _raise_chain()
    return info.value


def _all_attribute_values(error: BaseException) -> str:
    return repr(vars(error)) + repr(error.args)


def test_mask_exception_chain_shows_no_secret() -> None:
    original = _chained_error()
    assert OPENAI_KEY in repr(original.body)  # the SDK error does hold the key

    masked = mask_exception(original)
    printed = "".join(traceback.format_exception(masked))

    for secret in (OPENAI_KEY, GITHUB_TOKEN, HF_TOKEN):
        assert secret not in printed
        assert secret not in _all_attribute_values(masked)
        assert secret not in _all_attribute_values(masked.__cause__)
    assert isinstance(masked, ProviderError)
    assert masked.type_name == "AuthenticationError"
    assert masked.status_code == 401
    assert masked.retry_after == "7"
    assert masked.request_id == "req_abc123"
    assert str(masked).startswith("AuthenticationError: Error code: 401 - ")
    assert "Incorrect API key provided: [REDACTED]" in printed
    assert "ValueError: token [REDACTED] rejected" in printed
    assert "_raise_chain" in printed  # the original traceback, as masked text


def test_mask_exception_keeps_no_reference_to_originals() -> None:
    original = _chained_error()
    masked = mask_exception(original)
    cause = masked.__cause__
    assert isinstance(cause, ProviderError)
    assert cause.type_name == "ValueError"
    assert cause.status_code is None
    assert masked.__cause__ is not original.__cause__
    assert masked.__traceback__ is None
    for copy in (masked, cause):
        assert not any(isinstance(value, BaseException) for value in vars(copy).values())
        assert not any(isinstance(value, httpx.Response) for value in vars(copy).values())
        assert all(isinstance(arg, str) for arg in copy.args)


def test_mask_exception_links_like_the_original_and_survives_cycles() -> None:
    first = RuntimeError(f"first {OPENAI_KEY}")
    second = KeyError("second")
    first.__context__ = second
    second.__cause__ = first  # a cycle
    second.__suppress_context__ = True
    masked = mask_exception(first)
    assert masked.__context__ is not None
    assert masked.__context__.__cause__ is masked
    assert masked.__context__.__suppress_context__ is True
    printed = "".join(traceback.format_exception(masked))
    assert OPENAI_KEY not in printed


def test_mask_exception_is_idempotent_and_picklable() -> None:
    masked = mask_exception(_chained_error())
    again = mask_exception(masked)
    assert str(again) == str(masked)
    assert (again.status_code, again.retry_after) == (401, "7")
    restored = pickle.loads(pickle.dumps(masked))
    assert (restored.type_name, restored.message) == (masked.type_name, masked.message)
    assert restored.status_code == 401
    assert restored.__notes__ == masked.__notes__


def test_provider_error_without_message_prints_its_type() -> None:
    assert str(mask_exception(TimeoutError())) == "TimeoutError"


def test_package_errors_hold_masked_text_only() -> None:
    failed = Proposal(
        layer=1,
        index=0,
        model="gpt",
        text=None,
        usage=None,
        latency_s=0.1,
        error=describe_error(RuntimeError(f"bad key {OPENAI_KEY}")),
    )
    proposers = ProposersFailedError(1, 1, [failed])
    aggregator = AggregatorFailedError("agg", _chained_error(), [failed])
    for error in (proposers, aggregator):
        assert OPENAI_KEY not in str(error)
        assert OPENAI_KEY not in repr(vars(error))
    assert "[REDACTED]" in str(aggregator)
